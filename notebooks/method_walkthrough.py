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
# The workflow's steps are thin wrappers around `medxgan`'s library. This notebook uses its Python
# API, `medxgan.api.MedXGAN`, on the trained bundle the workflow wrote (run `make run` first): it
# inverts one positive test image, builds its negative realisation, and explains it with every
# method through the one call they share, `attribute(images, target)`.

# %%
import json
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from medxgan.report import tables
from medxgan.api import MedXGAN
from medxgan.data.manifest import load_split
from medxgan.explainers import EXPLAINERS

ROOT = Path(".") if Path("results").is_dir() else Path("..")
DATASET = tables.summary_table(ROOT / "results").dataset.iloc[-1]  # the last dataset the run summarised
explainer = MedXGAN.from_bundle(ROOT / "results" / DATASET / "bundle")
C, G, data = explainer.classifier, explainer.generator, explainer.settings["data"]
# The inversion records its manifest relative to the repository root (absolute when it lies elsewhere).
manifest = ROOT / json.loads((ROOT / "results" / DATASET / "inversion" / "provenance.json").read_text())["manifest"]
test = load_split(manifest, "test", data["negative"], data["positive"], data["image_size"], data["channels"],
                  label="positive")
image = test.subset(test.has_mask.nonzero().flatten()[:1] if test.has_mask.any() else torch.tensor([0]))
print(f"dataset {DATASET}, test image {image.ids[0]}")
print(f"C's positive probability for the image: {explainer.probabilities(image.images).item():.3f}")

# %% [markdown]
# ## Inversion
# Find (z1, z2) with G(z1, z2) ≈ x and C(G(z1, z2)) ≈ C(x), with the settings and seed the
# workflow used (random restarts, or the encoder's guess refined, as `inversion.init` says).

# %%
codes = explainer.invert(image.images, image.rows)
for title, key in [("reconstruction G(z1, z2)", "p_reconstruction"), ("negative realisation G(z1, 0)", "p_negative")]:
    print(f"{title}: C's positive probability {getattr(codes, key).item():.3f}")
print(f"reconstruction SSIM {codes.ssim.item():.3f}")

# %% [markdown]
# ## Every explanation through one call
# The generative methods read the inversion's codes; Grad-CAM and IG look at the image alone.

# %%
heatmaps = explainer.explain(image.images, methods=list(EXPLAINERS), codes=codes)
panels = [("original", image.images[0, 0]), ("reconstruction", codes.reconstruction[0, 0]),
          ("negative realisation", codes.negative[0, 0])] + [(n, h[0]) for n, h in heatmaps.items()]
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
latent_ig = EXPLAINERS["latent_ig"](C, codes.drawn_by(G), n_steps=64)  # G as tuned for the image
total = latent_ig.attributions(codes.z1, codes.z2).sum().item()
gap = (codes.p_reconstruction - codes.p_negative).item()
print(f"sum of attributions {total:.4f}; probability gap {gap:.4f}")
