"""Robustness of explanations to input perturbations: medXGAN's claim that Latent IG is more robust
to noise than pixel-space IG.

`explain` is any callable images (N, C, H, W) in [-1, 1] -> heatmaps (N, H, W). For the medXGAN
methods the caller wraps "invert the perturbed image, then explain from its codes": the heatmap of a
noisy image comes from that image's own inversion, never from the clean image's codes. That is what
makes the robustness claim testable (noise reaches the heatmap only through the inversion), and what
makes it expensive (one inversion per noise level, or per sample in `max_sensitivity`).

Random draws are per image: image i's noise comes from a generator seeded by (seed, i), so it does
not change when the batch grows, shrinks or is split into chunks.
"""

from __future__ import annotations

from typing import Callable, Sequence

import pandas as pd
import torch
from torch import Tensor

from medxgan.evaluate.metrics import heatmap_similarity

Explain = Callable[[Tensor], Tensor]
IMAGE_MIN, IMAGE_MAX = -1.0, 1.0
SEED_STRIDE = 1_000_003  # as in inversion.starting_codes: distinct (seed, index) below a million images


def image_generators(count: int, seed: int) -> list[torch.Generator]:
    """One CPU generator per image, seeded by (seed, index)."""
    return [torch.Generator().manual_seed(seed * SEED_STRIDE + index) for index in range(count)]


def _draw(images: Tensor, generators: list[torch.Generator], sampler: Callable[..., Tensor]) -> Tensor:
    """One draw of images[0]'s shape per image from its own generator, on the images' device."""
    shape = images.shape[1:]
    return torch.stack([sampler(shape, generator=g) for g in generators]).to(images.device, images.dtype)


def add_noise(images: Tensor, sigma: float, seed: int) -> Tensor:
    """Images plus Gaussian noise of standard deviation `sigma` (in the [-1, 1] scale), clamped to [-1, 1].

    Deterministic by seed; image i's noise depends only on (seed, i). The same seed at different sigmas
    gives the same noise pattern scaled, so a sweep over sigma compares levels, not noise draws.
    """
    noise = _draw(images, image_generators(len(images), seed), torch.randn)
    return (images + sigma * noise).clamp(IMAGE_MIN, IMAGE_MAX)


def sensitivity_samples(images: Tensor, radius: float = 0.05, samples: int = 10, seed: int = 0) -> list[Tensor]:
    """The perturbed copies `max_sensitivity` explains: `samples` uniform draws in the L-inf ball of
    `radius`, clamped to [-1, 1]; image i's draws depend only on (seed, i)."""
    generators = image_generators(len(images), seed)
    return [(images + radius * (2 * _draw(images, generators, torch.rand) - 1)).clamp(IMAGE_MIN, IMAGE_MAX)
            for _ in range(samples)]


def max_sensitivity(explain: Explain, images: Tensor, radius: float = 0.05, samples: int = 10,
                    seed: int = 0) -> Tensor:
    """Max-sensitivity (Yeh et al. 2019), per image (N,):
    max over `samples` uniform perturbations d in the L-inf ball of `radius` of
    ||explain(x + d) - explain(x)||_2 / ||explain(x)||_2.

    Dividing by the clean heatmap's norm lets methods with different heatmap scales compare; NaN where
    that norm is 0. The perturbed images are `sensitivity_samples`; one explain call per sample covers
    all images.
    """
    reference = explain(images).detach().float().flatten(1)
    reference_norm = reference.norm(dim=1)
    worst = torch.zeros_like(reference_norm)
    for perturbed_images in sensitivity_samples(images, radius, samples, seed):
        perturbed = explain(perturbed_images).detach().float().flatten(1)
        worst = torch.maximum(worst, (perturbed - reference).norm(dim=1))
    return torch.where(reference_norm > 0, worst / reference_norm, float("nan")).cpu()


def noise_robustness(explain: Explain, images: Tensor, sigmas: Sequence[float] = (0.0, 0.05, 0.1, 0.2),
                     seed: int = 0) -> pd.DataFrame:
    """Tidy rows (sigma, image, metric, value): `heatmap_similarity` of explain(add_noise(images, sigma))
    to explain(images), for each sigma and metric ("spearman", "ssim").

    Sigma 0 is explained again rather than copied, so its row shows the explainer's own run-to-run
    variation (e.g. a stochastic inversion): the ceiling the noisy rows are read against.
    """
    clean = explain(images)
    frames = []
    for sigma in sigmas:
        scores = heatmap_similarity(clean, explain(add_noise(images, sigma, seed)))
        for metric, values in scores.items():
            frames.append(pd.DataFrame({"sigma": float(sigma), "image": range(len(images)),
                                        "metric": metric, "value": values.double().numpy()}))
    return pd.concat(frames, ignore_index=True)
