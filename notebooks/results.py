# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # medXGAN results, dataset by dataset
#
# Reads what the workflow wrote under `results/` (run `make run` first: by default the two
# built-in synthetic datasets) and shows, for each dataset: the classifier, the GAN, how faithful the inversion is, and how the explanation methods
# compare against the lesion masks. Every number is a mean over the positive test images with a
# 95% bootstrap interval.

# %%
import json
from pathlib import Path

import pandas as pd
from IPython.display import Image, Markdown, display

RESULTS = Path("results") if Path("results").is_dir() else Path("..") / "results"
DATASETS = list(pd.read_csv(RESULTS / "summary.csv").dataset.unique())


def interval(row) -> str:
    return f"{row['mean']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"


# %% [markdown]
# ## Classifier and GAN
# The classifier must be good before its explanations mean anything; the GAN's disentanglement
# check decodes random z1 with z2 = 0 (should be called negative) and with random z2 (positive).

# %%
rows = []
for name in DATASETS:
    classifier = json.loads((RESULTS / name / "classifier" / "metrics.json").read_text())
    gan = json.loads((RESULTS / name / "gan" / "summary.json").read_text())["disentanglement"]
    rows.append({"dataset": name, "test accuracy": classifier["test"]["accuracy"],
                 "test AUROC": classifier["test"]["auroc"],
                 "G(z1, 0) called negative": gan["negative_called_negative"],
                 "G(z1, z2) called positive": gan["positive_called_positive"]})
pd.DataFrame(rows).set_index("dataset").round(3)

# %% [markdown]
# ## Inversion fidelity
# medXGAN explains a real image through its reconstruction G(z1, z2): a poor reconstruction
# means the difference map explains another image.

# %%
for name in DATASETS:
    table = pd.read_csv(RESULTS / name / "metrics.csv")
    fidelity = table[table.method == "medxgan inversion"]
    display(Markdown(f"### {name}"))
    display(fidelity.assign(value=fidelity.apply(interval, axis=1)).set_index("metric")[["value"]])

# %% [markdown]
# ## Explanations against the lesion masks
# Higher is better for every row except `deletion_auc`; `random` shows chance level.

# %%
for name in DATASETS:
    table = pd.read_csv(RESULTS / name / "metrics.csv")
    scores = table[table.method != "medxgan inversion"]
    display(Markdown(f"### {name}"))
    display(scores.assign(cell=scores.apply(interval, axis=1))
            .pivot(index="metric", columns="method", values="cell"))
    display(Image(filename=str(RESULTS / name / "figures" / "metrics.png")))

# %% [markdown]
# ## Paired comparisons
# Wilcoxon signed-rank p-values between Latent IG and the two baselines, over the same images.

# %%
for name in DATASETS:
    comparisons = pd.read_csv(RESULTS / name / "metrics_comparisons.csv")
    mask = comparisons.method_a.eq("latent_ig") | comparisons.method_b.eq("latent_ig")
    mask &= comparisons.method_a.isin(["gradcam", "ig"]) | comparisons.method_b.isin(["gradcam", "ig"])
    display(Markdown(f"### {name}"))
    display(comparisons[mask].round(4).set_index("metric"))

# %% [markdown]
# ## The paper's figures
# Pipeline rows (original, reconstruction, negative realisation, difference map, colorized map,
# Grad-CAM, Latent IG, IG) and the interpolation G(z1, a·z2).

# %%
for name in DATASETS:
    display(Markdown(f"### {name}"))
    display(Image(filename=str(RESULTS / name / "figures" / "pipeline.png")))
    display(Image(filename=str(RESULTS / name / "figures" / "interpolation.png")))
