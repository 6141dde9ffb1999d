"""Checks on the explanations themselves: do they depend on the classifier, and are medXGAN's
counterfactuals close to the images they explain and realistic in the classifier's eyes?

- Sanity check (Adebayo et al. 2018, "Sanity Checks for Saliency Maps"): the classifier's layers are
  re-initialised one by one from the output down; a heatmap that barely changes does not explain
  the classifier.
- Counterfactual quality: proximity of the negative realisation G(z1, 0) to the reconstruction
  G(z1, z2), and the Fréchet distance between two image sets measured in the classifier's
  penultimate features (not Inception features: the classifier is the only network that has seen
  these images).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd
import torch
from scipy.linalg import sqrtm
from scipy.stats import spearmanr
from torch import Tensor, nn
from torchmetrics.functional.image import structural_similarity_index_measure

from medxgan.explainers import frozen, module_device
from medxgan.metrics import reconstruction_ssim

RANDOMISED_LAYERS = (nn.Linear, nn.Conv2d, nn.BatchNorm2d)
HEATMAP_RANGE = 1.0  # heatmaps are min-max normalised before SSIM


# --- Sanity check: cascading model-parameter randomisation -------------------------------------------

def parameterised_layers(classifier: nn.Module) -> list[str]:
    """Names of the Linear/Conv2d/BatchNorm2d modules that own parameters, input side first.

    Registration order stands in for the order of the forward pass, as it does for the
    sequential classifiers of this package.
    """
    return [name for name, module in classifier.named_modules()
            if isinstance(module, RANDOMISED_LAYERS) and _owns_parameters(module)]


def _owns_parameters(module: nn.Module) -> bool:
    return next(module.parameters(recurse=False), None) is not None


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed the global generators that reset_parameters() draws from, then give the caller back
    its own random stream."""
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
        torch.manual_seed(seed)
        yield


def _reinitialise(layer: nn.Module, seed: int) -> None:
    # BatchNorm's reset_parameters() also resets its running statistics.
    with _seeded(seed):
        layer.reset_parameters()


def cascading_randomisation(classifier: nn.Module, seed: int = 0) -> Iterator[tuple[str, nn.Module]]:
    """Yield (layer name, randomised copy) from the output layer down to the first layer.

    At step k (1-based) the copy has the top k parameterised layers re-initialised with their own
    reset_parameters() under seed + (their step), and every layer below as in `classifier`. Each
    copy is a separate deep copy in eval mode; `classifier` itself is never changed.
    """
    layers = parameterised_layers(classifier)
    if not layers:
        raise ValueError("the classifier has no Linear, Conv2d or BatchNorm2d layer with parameters")
    randomised = copy.deepcopy(classifier)
    for step, name in enumerate(reversed(layers), start=1):
        _reinitialise(randomised.get_submodule(name), seed + step)
        yield name, copy.deepcopy(randomised).eval()


def _min_max(heatmaps: Tensor) -> Tensor:
    """Each heatmap scaled to [0, 1]; a constant heatmap becomes all zeros."""
    flat = heatmaps.flatten(1).double()
    low, high = flat.min(dim=1, keepdim=True).values, flat.max(dim=1, keepdim=True).values
    span = high - low
    return ((flat - low) / torch.where(span > 0, span, 1.0)).view_as(heatmaps)


def heatmap_rank_correlation(reference: Tensor, heatmaps: Tensor) -> Tensor:
    """(N,) Spearman rank correlation of each heatmap with its reference (ties get average ranks).

    NaN where either heatmap is constant: there is no ranking to compare.
    """
    correlations = [spearmanr(a, b).statistic if a.std() > 0 and b.std() > 0 else float("nan")
                    for a, b in zip(reference.flatten(1).double().numpy(), heatmaps.flatten(1).double().numpy())]
    return torch.tensor(correlations, dtype=torch.float64)


def heatmap_ssim(reference: Tensor, heatmaps: Tensor) -> Tensor:
    """(N,) SSIM between the min-max normalised heatmaps (N, H, W)."""
    return structural_similarity_index_measure(_min_max(heatmaps)[:, None], _min_max(reference)[:, None],
                                               data_range=HEATMAP_RANGE, reduction="none").cpu()


def sanity_check(explain: Callable[[nn.Module], Tensor], classifier: nn.Module, seed: int = 0) -> pd.DataFrame:
    """Cascading randomisation test: one row per (randomised layer, image).

    `explain(model)` returns (N, H, W) heatmaps of the same images under `model`: first the original
    classifier, then every copy from `cascading_randomisation`. Columns: layer, step (1 = only the
    output layer randomised), image (index), spearman and ssim against the original model's heatmap.
    A method that explains the classifier loses that agreement as more layers are randomised; one
    whose correlation stays near 1 fails the check.

    The generative methods: G was trained against the original C and is not retrained, so only C is
    randomised; `explain` decides what the randomised C is passed to. Latent IG reads C's gradients
    directly. The difference map and the interpolation read C only through the inversion: with
    latents computed once under the original C they cannot change (and fail the check by
    construction); to test the whole pipeline, `explain` must invert again with the randomised C.
    """
    reference = explain(classifier)
    images = np.arange(len(reference))
    frames = []
    for step, (layer, model) in enumerate(cascading_randomisation(classifier, seed), start=1):
        heatmaps = explain(model)
        frames.append(pd.DataFrame({
            "layer": layer, "step": step, "image": images,
            "spearman": heatmap_rank_correlation(reference, heatmaps).numpy(),
            "ssim": heatmap_ssim(reference, heatmaps).double().numpy(),
        }))
    return pd.concat(frames, ignore_index=True)


# --- Counterfactual quality of medXGAN -------------------------------------------------------------

def proximity(negatives: Tensor, reconstructions: Tensor) -> dict[str, Tensor]:
    """How little the negative realisation G(z1, 0) changes the reconstruction G(z1, z2), per image:
    "l1" mean absolute difference, "ssim" structural similarity (images in [-1, 1])."""
    return {
        "l1": (negatives - reconstructions).abs().flatten(1).mean(dim=1).cpu(),
        "ssim": reconstruction_ssim(negatives, reconstructions),
    }


def last_linear(classifier: nn.Module) -> nn.Linear:
    linears = [m for m in classifier.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("the classifier has no Linear layer: no penultimate features to read")
    return linears[-1]


def penultimate_features(classifier: nn.Module, images: Tensor, batch_size: int = 256) -> Tensor:
    """(N, D) input of the classifier's last Linear layer, in eval mode and without gradients.

    The classifier's modes, flags and hooks are as before afterwards, also when the forward pass fails.
    """
    captured = []
    hook = last_linear(classifier).register_forward_hook(lambda module, inputs, output: captured.append(inputs[0]))
    device = module_device(classifier)
    try:
        with frozen(classifier), torch.no_grad():
            for chunk in images.split(batch_size):
                classifier(chunk.to(device))
    finally:
        hook.remove()
    return torch.cat(captured).float().cpu()


def frechet_distance(features_a: Tensor, features_b: Tensor, imaginary_tolerance: float = 1e-3) -> float:
    """Fréchet distance between Gaussians fitted to two (N, D) feature sets:
    |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)).

    Reported on the classifier's penultimate features (see `penultimate_features`), not Inception's.
    The estimate is biased upward with few samples (sampling noise in the means and covariances adds
    distance even between two samples of one distribution), so compare distances only at equal
    sample sizes. The matrix square root is taken in float64; an imaginary part from round-off is
    dropped, one larger than `imaginary_tolerance` raises.
    """
    a, b = (f.detach().double().cpu().numpy() for f in (features_a, features_b))
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two (N >= 2, D) feature sets of one width, got {a.shape} and {b.shape}")
    mean_a, mean_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    cross = sqrtm(cov_a @ cov_b)
    if np.iscomplexobj(cross):
        if np.abs(cross.imag).max() > imaginary_tolerance:
            raise ValueError(f"matrix square root has an imaginary part of {np.abs(cross.imag).max():.3g}")
        cross = cross.real
    return float(((mean_a - mean_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(cross))
