"""Checks on the explanations themselves: do they depend on the classifier, and are medXGAN's
counterfactuals close to the images they explain and realistic in the classifier's eyes?

- Sanity check (Adebayo et al. 2018, "Sanity Checks for Saliency Maps"): the classifier's layers are
  re-initialised one by one from the output down; a heatmap that barely changes does not explain
  the classifier.
- Counterfactual quality: proximity of the negative realisation G(z1, 0) to the reconstruction
  G(z1, z2), and the Fréchet distance between two image sets measured in the classifier's
  penultimate features (the only network that has seen these images) and, when its ImageNet
  weights are on disk, in Inception v3's 2048 pool features. That is FID's recipe, but with
  torchvision's ImageNet Inception weights, not the TensorFlow weights FID scores are quoted with:
  the numbers compare runs of this project, not published FIDs.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medxgan.evaluate.metrics import heatmap_similarity
from medxgan.files import load_state_dict
from medxgan.inversion import reconstruction_ssim
from medxgan.torch_utils import frozen, module_device

RANDOMISED_LAYERS = (nn.Linear, nn.Conv2d, nn.BatchNorm2d)
INCEPTION_SIZE = 299  # Inception v3's input resolution
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


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
            **{name: values.double().numpy() for name, values in heatmap_similarity(reference, heatmaps).items()},
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


def load_inception(weights: str | Path) -> nn.Module:
    """torchvision's Inception v3 with the given ImageNet weights (its release file, or the same as
    .safetensors), the classification layer removed: it returns the 2,048 pool features."""
    from torchvision.models import inception_v3  # only where the Inception distance is asked for

    # transform_input=True, as torchvision sets it for these weights: they expect its own scaling
    model = inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=True)
    model.load_state_dict(load_state_dict(weights))
    model.fc = nn.Identity()
    return model.eval()


def inception_features(model: nn.Module, images: Tensor, batch_size: int = 64) -> Tensor:
    """(N, 2048) Inception pool features of images in [-1, 1] (grey images repeated to RGB)."""
    device = module_device(model)
    mean, std = (torch.tensor(v, device=device).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    features = []
    with torch.no_grad():
        for chunk in images.split(batch_size):
            rgb = ((chunk.float().to(device) + 1) / 2).expand(-1, 3, -1, -1)
            rgb = F.interpolate(rgb, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
            features.append(model((rgb - mean) / std).cpu())
    return torch.cat(features)


def _psd_eigenvalues(values: np.ndarray) -> np.ndarray:
    """Eigenvalues of a symmetric PSD matrix with round-off set to 0: anything below the usual rank
    tolerance (largest x size x machine epsilon). Their square roots would otherwise add up to a
    visible error when the matrix is singular (fewer samples than features)."""
    tolerance = max(values.max(initial=0.0), 0.0) * len(values) * np.finfo(values.dtype).eps
    return np.where(values > tolerance, values, 0.0)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix."""
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(_psd_eigenvalues(values))) @ vectors.T


def frechet_distance(features_a: Tensor, features_b: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two (N, D) feature sets:
    |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)).

    The estimate is biased upward with few samples (sampling noise in the means and covariances adds
    distance even between two samples of one distribution), so compare distances only at equal
    sample sizes. Tr((S_a S_b)^(1/2)) is computed as Tr((S_a^(1/2) S_b S_a^(1/2))^(1/2)), a symmetric
    form that stays real when the covariances are singular (fewer samples than features), the usual
    case here. torchmetrics' FrechetInceptionDistance gives the same numbers to 6 digits on
    well-conditioned sets, but takes the eigenvalues of the non-symmetric S_a S_b: for a set of 2
    Inception feature vectors (2048 wide) against itself it returns 0.136 instead of 0
    (tests/test_checks.py bounds that error by 1e-6 of the features' spread).
    """
    a, b = (f.detach().double().cpu().numpy() for f in (features_a, features_b))
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two (N >= 2, D) feature sets of one width, got {a.shape} and {b.shape}")
    mean_a, mean_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    root_a = _psd_sqrt(cov_a)
    cross = np.sqrt(_psd_eigenvalues(np.linalg.eigvalsh(root_a @ cov_b @ root_a))).sum()
    return float(((mean_a - mean_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * cross)
