# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # medXGAN, step by step, with the library
#
# The workflow's steps are thin wrappers around `medxgan`'s library. This notebook uses the
# library directly on the models the workflow trained (run `make run` first): it inverts one
# positive test image, builds its negative realisation, and explains it with every method through
# the one call they share, `attribute(images, target)`.

# %%
import json
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import torch

from medxgan.data.manifest import load_split
from medxgan.explainers import EXPLAINERS, GENERATIVE_METHODS
from medxgan.inversion import invert
from medxgan.models import load_model, positive_probability

ROOT = Path(".") if Path("results").is_dir() else Path("..")
DATASET = pd.read_csv(ROOT / "results" / "summary.csv").dataset.iloc[-1]  # the last dataset the workflow ran
results = ROOT / "results" / DATASET
C = load_model(results / "classifier" / "model.safetensors")
G = load_model(results / "gan" / "generator.safetensors")
inversion_run = json.loads((results / "inversion" / "provenance.json").read_text())
run, data = inversion_run["settings"], inversion_run["settings"]["data"]
test = load_split(inversion_run["manifest"], "test", data["negative"], data["positive"],
                  data["image_size"], data["channels"], label="positive")
image = test.subset(test.has_mask.nonzero().flatten()[:1] if test.has_mask.any() else torch.tensor([0]))
print(f"dataset {DATASET}, test image {image.ids[0]}")
print(f"C's positive probability for the image: {positive_probability(C, image.images).item():.3f}")

# %% [markdown]
# ## Inversion
# Find (z1, z2) with G(z1, z2) ≈ x and C(G(z1, z2)) ≈ C(x): several random restarts optimised
# together, the best kept, with the settings and seed the workflow used.

# %%
codes = invert(G, C, image.images, image.rows, run["inversion"], seed=run["seed"])
with torch.no_grad():
    reconstruction = G(codes.z1, codes.z2)
    negative = G(codes.z1, torch.zeros_like(codes.z2))
for title, x in [("reconstruction G(z1, z2)", reconstruction), ("negative realisation G(z1, 0)", negative)]:
    print(f"{title}: C's positive probability {positive_probability(C, x).item():.3f}")

# %% [markdown]
# ## Every explanation through one call
# The generative methods take the inversion's codes; Grad-CAM and IG look at the image alone.

# %%
heatmaps = {}
for name, explainer_class in EXPLAINERS.items():
    if name in GENERATIVE_METHODS:
        heatmaps[name] = explainer_class(C, G).attribute(image.images, target=1, latents=(codes.z1, codes.z2))
    else:
        heatmaps[name] = explainer_class(C).attribute(image.images, target=1)

panels = [("original", image.images[0, 0]), ("reconstruction", reconstruction[0, 0]),
          ("negative realisation", negative[0, 0])] + [(n, h[0]) for n, h in heatmaps.items()]
fig, axes = plt.subplots(1, len(panels), figsize=(2.2 * len(panels), 2.6))
for ax, (title, picture) in zip(axes, panels):
    ax.imshow(picture, cmap="gray" if title in ("original", "reconstruction", "negative realisation") else "inferno")
    ax.contour(image.masks[0], levels=[0.5], colors="cyan", linewidths=0.6)
    ax.set_title(title, fontsize=8)
    ax.axis("off")
plt.show()

# %% [markdown]
# ## Latent IG is complete
# Its attributions along G(z1, a·z2) add up to C(G(z1, z2)) − C(G(z1, 0)).

# %%
latent_ig = EXPLAINERS["latent_ig"](C, G, n_steps=64)
total = latent_ig.attributions(codes.z1, codes.z2).sum().item()
with torch.no_grad():
    gap = (positive_probability(C, reconstruction) - positive_probability(C, negative)).item()
print(f"sum of attributions {total:.4f}; probability gap {gap:.4f}")
