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
# # medXGAN on brain MRIs
#
# Every brain MRI dataset of the last run (`family: brain_mri` in the config): the built-in
# `synthetic-mri` phantoms (a bright tumour inside the brain, with its mask) and, with
# `config/paper.yaml`, the paper's Kaggle set `brain-sartaj` (no masks: faithfulness only) and
# `brain-figshare`, whose tumour masks make localisation scoring possible on real slices.
#
# Run the workflow first (`make run`); this notebook only reads `results/`.

# %%
from pathlib import Path

from IPython.display import display

from medxgan.report import tables

RESULTS = Path("results") if Path("results").is_dir() else Path("..") / "results"
DATASETS = tables.datasets_of_family(RESULTS, "brain_mri")
print("datasets:", ", ".join(DATASETS) or "none in this run")

# %% [markdown]
# ## Classifier and GAN
# The GAN's disentanglement check decodes random z1 with z2 = 0 (should be called tumour-free) and
# with random z2 (tumour). A GAN that passes this check may still draw its "tumour" as a change of
# texture or skull outline: the interpolation figure below shows what z2 actually changes.

# %%
tables.model_table(RESULTS, DATASETS) if DATASETS else None

# %%
for name in DATASETS:
    for section in tables.notebook_sections(RESULTS, name):
        display(section)

# %% [markdown]
# ## Reading the brain MRI results
# A tumour is compact and bright, so every method finds it more easily than an opacity, and
# pixel-space IG, which multiplies by the image, is favoured by the tumour's brightness. The
# difference map only marks what the GAN changed: where the inversion is poor (see the worst
# reconstructions above) it marks reconstruction error, not pathology.
