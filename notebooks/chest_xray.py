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
# # medXGAN on chest X-rays
#
# Every chest X-ray dataset of the last run (`family: chest_xray` in the config): the built-in
# `synthetic-cxr` phantoms (a soft opacity in one lung field, with its mask) and, with
# `config/paper.yaml`, the public COVID sets. The paper's COVID experiment used an in-house set;
# `covid-qu-ex` is its public substitute, and its infection masks make localisation scoring
# possible on real images. `covid-radiography` has lung masks only, so it is scored on
# faithfulness alone, and its COVID and normal images come from different hospitals: a
# classifier can separate them by source, and a heatmap that lights up borders or text may be
# explaining exactly that shortcut.
#
# Run the workflow first (`make run`); this notebook only reads `results/`.

# %%
from pathlib import Path

from IPython.display import display

from medxgan.report import tables

RESULTS = Path("results") if Path("results").is_dir() else Path("..") / "results"
DATASETS = tables.datasets_of_family(RESULTS, "chest_xray")
print("datasets:", ", ".join(DATASETS) or "none in this run")

# %% [markdown]
# ## Classifier and GAN
# The classifier must be good before its explanations mean anything. The GAN's disentanglement
# check decodes random z1 with z2 = 0 (should be called normal) and with random z2 (abnormal).

# %%
tables.model_table(RESULTS, DATASETS) if DATASETS else None

# %%
for name in DATASETS:
    for section in tables.notebook_sections(RESULTS, name):
        display(section)

# %% [markdown]
# ## Reading the chest X-ray results
# An opacity is diffuse and low-contrast, so pointing-game hits are harder than on a compact
# tumour, and mask AUROC and mass in lesion say more. Grad-CAM's map comes from the last
# convolutional block, a few pixels across at this resolution, so it cannot outline an opacity
# however right its region is.
