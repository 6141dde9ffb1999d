"""Per-image scores for explanations and reconstructions; each returns a (N,) float tensor on the CPU.

Heatmaps are non-negative (N, H, W) tensors, masks boolean (N, H, W) lesion masks, images (N, C, H, W)
in [-1, 1]. Pixels are ranked by heatmap value, highest first; equal values keep row-major order, so
every ranking (and every top-k region built from it) is deterministic. Where an image has a healthy
twin (the same image without its lesion, as the phantoms have), |image - twin| is the lesion's true
effect, and heatmaps and negative realisations are scored against it. The statistics at the end turn
per-image scores into an interval or a paired test.

torchmetrics, torchvision and scipy are imported by the functions that use them: loading them takes
seconds, which a step that only perturbs or normalises images should not pay.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from medxgan.data.manifest import IMAGE_RANGE
from medxgan.nets.networks import positive_probability
from medxgan.torch_utils import frozen, module_device

BASELINES = ("mean", "blur")
EIGHT_BIT_MAX = 255
# |image - twin| above half an 8-bit grey level marks the lesion's own support: a twin is its image
# without the lesion, stored alike, so elsewhere the two hold the same grey levels (a difference of 0),
# and a whole grey level of difference (IMAGE_RANGE / EIGHT_BIT_MAX) is the lesion's doing.
LESION_SUPPORT_THRESHOLD = 0.5 * IMAGE_RANGE / EIGHT_BIT_MAX
# Paired tests on this many pairs or fewer enumerate every sign flip (2**13 = 8,192), as scipy's
# `wilcoxon` does below its default 9,999 resamples; above it, scipy's own exact or normal p-value.
EXACT_WILCOXON_PAIRS = 13


def pointing_game(heatmaps: Tensor, masks: Tensor) -> Tensor:
    """1.0 where the heatmap's maximum over the mask equals its global maximum, else 0.0."""
    flat, inside = heatmaps.flatten(1).float(), masks.flatten(1)
    masked_max = flat.masked_fill(~inside, float("-inf")).amax(dim=1)
    return (masked_max == flat.amax(dim=1)).float().cpu()


def mass_in_lesion(heatmaps: Tensor, masks: Tensor) -> Tensor:
    """Share of the heatmap's mass inside the mask; 0.0 for an all-zero heatmap."""
    flat = heatmaps.flatten(1).float()
    total = flat.sum(dim=1)
    inside = (flat * masks.flatten(1)).sum(dim=1)
    return torch.where(total > 0, inside / total, 0.0).cpu()


def mask_auroc(heatmaps: Tensor, masks: Tensor) -> Tensor:
    """AUROC of pixel heatmap values against the mask; NaN where the mask is empty or full.

    The Mann-Whitney form, from average ranks (ties count half), for all images at once: the same
    number as the area under the ROC curve (torchmetrics' `binary_auroc`, within 2e-7), which, called
    per image, took 9 s of the evaluate step's 40 (100 images, 10 maps; this form takes 1 s)."""
    from scipy.stats import rankdata

    values = heatmaps.detach().flatten(1).float().cpu().numpy()
    inside = masks.flatten(1).cpu().numpy().astype(bool)
    ranks = rankdata(values, axis=1)
    positives = inside.sum(axis=1)
    negatives = inside.shape[1] - positives
    defined = (positives > 0) & (negatives > 0)
    u = (ranks * inside).sum(axis=1) - positives * (positives + 1) / 2
    auroc = np.full(len(values), np.nan)
    auroc[defined] = u[defined] / (positives[defined] * negatives[defined])
    return torch.from_numpy(auroc).float()


def relevance_ranks(heatmaps: Tensor) -> Tensor:
    """(N, H, W) rank of every pixel in its heatmap: 0 is the most relevant."""
    flat = heatmaps.flatten(1)
    # A stable sort breaks ties by position, so equal heatmap values still give one fixed ranking.
    order = flat.sort(dim=1, descending=True, stable=True).indices
    positions = torch.arange(flat.shape[1], device=flat.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions).view_as(heatmaps)


def top_k_count(fraction: float, height: int, width: int) -> int:
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must lie in [0, 1], got {fraction}")
    return round(fraction * height * width)


def top_k_region(heatmaps: Tensor, fraction: float) -> Tensor:
    """Boolean (N, H, W): each heatmap's top `fraction` of pixels, k = round(fraction * H * W)."""
    return relevance_ranks(heatmaps) < top_k_count(fraction, *heatmaps.shape[-2:])


def relevance_rank_accuracy(heatmaps: Tensor, masks: Tensor) -> Tensor:
    """Share of the K highest-ranked pixels inside the mask, K = mask area (Arras et al. 2022).

    NaN for an empty mask.
    """
    inside = masks.flatten(1).cpu()
    area = inside.sum(dim=1)
    top = relevance_ranks(heatmaps).flatten(1).cpu() < area[:, None]
    hits = (top & inside).sum(dim=1)
    return torch.where(area > 0, hits / area, float("nan")).float()


def _region_overlap(heatmaps: Tensor, masks: Tensor, fraction: float) -> tuple[Tensor, Tensor, Tensor]:
    """Per image: |top-k region & mask|, |top-k region|, |mask|."""
    region = top_k_region(heatmaps, fraction).flatten(1).cpu()
    inside = masks.flatten(1).cpu()
    return (region & inside).sum(dim=1).float(), region.sum(dim=1).float(), inside.sum(dim=1).float()


def top_k_iou(heatmaps: Tensor, masks: Tensor, fraction: float) -> Tensor:
    """IoU of the top `fraction` region with the mask; NaN when both are empty."""
    overlap, region, mask = _region_overlap(heatmaps, masks, fraction)
    return overlap / (region + mask - overlap)


def top_k_dice(heatmaps: Tensor, masks: Tensor, fraction: float) -> Tensor:
    """Dice of the top `fraction` region with the mask; NaN when both are empty."""
    overlap, region, mask = _region_overlap(heatmaps, masks, fraction)
    return 2 * overlap / (region + mask)


def min_max_normalise(heatmaps: Tensor) -> Tensor:
    """Each heatmap scaled to [0, 1]; a constant heatmap becomes all zeros."""
    flat = heatmaps.flatten(1)
    low, high = flat.min(dim=1, keepdim=True).values, flat.max(dim=1, keepdim=True).values
    span = high - low
    return ((flat - low) / torch.where(span > 0, span, 1.0)).view_as(heatmaps)  # constant map: 0 / 1


def pixel_spearman(a: Tensor, b: Tensor) -> Tensor:
    """(N,) Spearman rank correlation over pixels of two (N, H, W) stacks, image by image (torchmetrics:
    tied values get their average rank, which matters for maps with large exactly-zero areas; a
    constant map scores 0, not NaN)."""
    from torchmetrics.functional.regression import spearman_corrcoef

    # torchmetrics treats columns as outputs: one column per image gives one correlation per image.
    return spearman_corrcoef(a.flatten(1).T, b.flatten(1).T)


def heatmap_similarity(clean: Tensor, noisy: Tensor) -> dict[str, Tensor]:
    """Per image (N,) similarity of two (N, H, W) heatmap stacks.

    "spearman": rank correlation over pixels (`pixel_spearman`).
    "ssim": SSIM of the min-max normalised heatmaps with data_range 1.0, so heatmaps on different
    scales compare (torchmetrics' default 11-pixel Gaussian window).
    """
    from torchmetrics.functional.image import structural_similarity_index_measure

    clean, noisy = clean.detach().float().cpu(), noisy.detach().float().cpu()
    if clean.shape != noisy.shape or clean.dim() != 3:
        raise ValueError(f"need two (N, H, W) heatmap stacks of one shape, got {tuple(clean.shape)} "
                         f"and {tuple(noisy.shape)}")
    spearman = pixel_spearman(noisy, clean)
    ssim = structural_similarity_index_measure(min_max_normalise(noisy)[:, None], min_max_normalise(clean)[:, None],
                                               data_range=1.0, reduction="none")
    return {"spearman": spearman, "ssim": ssim}


def twin_difference(images: Tensor, twins: Tensor) -> Tensor:
    """(N, H, W) |image - healthy twin|, averaged over channels: what the lesion changed, and where."""
    return (images.float() - twins.float()).abs().mean(dim=1).cpu()


def twin_difference_spearman(heatmaps: Tensor, differences: Tensor) -> Tensor:
    """Rank correlation of each heatmap with its image's `twin_difference`: does the heatmap rank pixels
    as the lesion changed them? NaN where the twin equals the image (nothing to rank against)."""
    heatmaps, differences = heatmaps.detach().float().cpu(), differences.float().cpu()
    changed = differences.flatten(1).amax(dim=1) > differences.flatten(1).amin(dim=1)
    return torch.where(changed, pixel_spearman(heatmaps, differences), float("nan"))


def twin_difference_mass(heatmaps: Tensor, differences: Tensor,
                         threshold: float = LESION_SUPPORT_THRESHOLD) -> Tensor:
    """Share of each heatmap's mass where the lesion changed the image (`twin_difference` above
    `threshold`); NaN where it changed nothing; 0.0 for an all-zero heatmap, as `mass_in_lesion`."""
    support = differences.cpu() > threshold
    return torch.where(support.flatten(1).any(dim=1), mass_in_lesion(heatmaps.detach().cpu(), support), float("nan"))


def squared_error_in_and_outside(predictions: Tensor, targets: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    """Per image, the mean squared error (averaged over channels) inside the mask and outside it; NaN
    where the region is empty."""
    error = (predictions.float() - targets.float()).pow(2).mean(dim=1).flatten(1).cpu()
    inside = masks.flatten(1).float().cpu()
    outside = 1 - inside
    return (error * inside).sum(dim=1) / inside.sum(dim=1), (error * outside).sum(dim=1) / outside.sum(dim=1)


def baseline_image(images: Tensor, kind: str, blur_kernel_size: int = 11, blur_sigma: float = 5.0) -> Tensor:
    """What removed pixels become: each image's per-channel "mean", or a Gaussian "blur" of it.

    The blur defaults follow RISE (Petsiuk et al. 2018): wide enough to wipe out local evidence.
    """
    if kind == "mean":
        return images.mean(dim=(2, 3), keepdim=True).expand_as(images)
    if kind == "blur":
        from torchvision.transforms.functional import gaussian_blur

        return gaussian_blur(images, kernel_size=blur_kernel_size, sigma=blur_sigma)
    raise ValueError(f"unknown baseline {kind!r}; expected one of {BASELINES}")


def perturb_top_k(images: Tensor, heatmaps: Tensor, fraction: float) -> Tensor:
    """Images with the top `fraction` of pixels (by heatmap) set to each image's per-channel mean."""
    region = top_k_region(heatmaps, fraction).to(images.device)[:, None]  # (N, 1, H, W): all channels
    return torch.where(region, baseline_image(images, "mean"), images)


def probability_drop(classifier: nn.Module, images: Tensor, heatmaps: Tensor, fraction: float) -> Tensor:
    """p_pos(images) - p_pos(images with their top `fraction` pixels set to the mean)."""
    device = module_device(classifier)
    images = images.to(device)
    perturbed = perturb_top_k(images, heatmaps, fraction)
    with frozen(classifier), torch.no_grad():
        return (positive_probability(classifier, images) - positive_probability(classifier, perturbed)).cpu()


def _step_counts(steps: int, pixels: int) -> Tensor:
    """Pixels taken after each of `steps` equal chunks: 0, ..., pixels."""
    return (torch.arange(steps + 1, dtype=torch.float64) * pixels / steps).round().long()


def _swap_curve(classifier: nn.Module, start: Tensor, end: Tensor, heatmaps: Tensor, steps: int,
                batch_size: int) -> Tensor:
    """(N, steps + 1) p_pos as pixels move from `start` to `end` in descending heatmap order."""
    device = module_device(classifier)
    n, _, height, width = start.shape
    counts = _step_counts(steps, height * width).to(device)
    ranks = relevance_ranks(heatmaps.to(device))
    # Whole images per chunk, so all of an image's steps share one forward pass where batch_size allows.
    images_per_chunk = max(1, batch_size // (steps + 1))
    curves = []
    with frozen(classifier), torch.no_grad():
        for chunk in torch.arange(n).split(images_per_chunk):
            taken = (ranks[chunk, None] < counts[None, :, None, None])[:, :, None]  # (n, S+1, 1, H, W)
            inputs = torch.where(taken, end[chunk, None].to(device), start[chunk, None].to(device))
            probabilities = [positive_probability(classifier, part)
                             for part in inputs.flatten(0, 1).split(batch_size)]
            curves.append(torch.cat(probabilities).view(len(chunk), steps + 1).cpu())
    return torch.cat(curves).float()


def deletion_curve(classifier: nn.Module, images: Tensor, heatmaps: Tensor, baseline: Tensor,
                   steps: int = 20, batch_size: int = 256) -> Tensor:
    """(N, steps + 1) p_pos as the most relevant pixels are replaced by `baseline` (RISE deletion).

    Starts at p_pos(images), ends at p_pos(baseline); a faithful heatmap makes it fall early.
    """
    return _swap_curve(classifier, images, baseline, heatmaps, steps, batch_size)


def insertion_curve(classifier: nn.Module, images: Tensor, heatmaps: Tensor, baseline: Tensor,
                    steps: int = 20, batch_size: int = 256) -> Tensor:
    """(N, steps + 1) p_pos as the most relevant pixels of `images` are revealed on `baseline` (RISE insertion).

    Starts at p_pos(baseline), ends at p_pos(images); a faithful heatmap makes it rise early.
    """
    return _swap_curve(classifier, baseline, images, heatmaps, steps, batch_size)


def curve_auc(curves: Tensor) -> Tensor:
    """(N,) trapezoid area under (N, steps + 1) curves, x spread evenly over [0, 1]."""
    x = torch.linspace(0.0, 1.0, curves.shape[1], dtype=torch.float64)
    return torch.trapezoid(curves.double().cpu(), x, dim=1).float()


def bootstrap_ci(values, n_resamples: int = 1000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (scipy.stats.bootstrap, seeded); NaNs dropped,
    (NaN, NaN) when no value is left, the value itself when one is."""
    from scipy.stats import bootstrap

    sample = np.asarray(values, dtype=np.float64).ravel()
    sample = sample[~np.isnan(sample)]
    if sample.size == 0:
        return float("nan"), float("nan")
    if sample.size == 1:  # scipy needs two observations; one value's mean does not vary
        return float(sample[0]), float(sample[0])
    interval = bootstrap((sample,), np.mean, n_resamples=n_resamples, confidence_level=confidence,
                         method="percentile", vectorized=True, rng=np.random.default_rng(seed)).confidence_interval
    return float(interval.low), float(interval.high)


def paired_wilcoxon(a, b) -> float:
    """Two-sided Wilcoxon signed-rank p-value for paired per-image values.

    Pairs with a NaN on either side are dropped. The p-value is NaN when fewer than 2 pairs are left
    or every difference is zero: there is then nothing to test. Up to EXACT_WILCOXON_PAIRS pairs,
    every sign flip is enumerated, as scipy's `wilcoxon` does for so few pairs, with a statistic
    vectorised over the flips: scipy evaluates its own once per flip, 80 ms a test, 9 s of a small
    test set's evaluation.
    """
    from scipy.stats import permutation_test, wilcoxon

    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    paired = ~(np.isnan(a) | np.isnan(b))
    differences = a[paired] - b[paired]
    if differences.size < 2 or not differences.any():
        return float("nan")
    if differences.size > EXACT_WILCOXON_PAIRS:
        return float(wilcoxon(differences).pvalue)
    return float(permutation_test((differences,), _signed_rank_sum, permutation_type="samples", vectorized=True,
                                  n_resamples=2**EXACT_WILCOXON_PAIRS, alternative="two-sided").pvalue)


def _signed_rank_sum(differences: np.ndarray, axis: int = -1) -> np.ndarray:
    """Wilcoxon's W+: the ranks of |d| summed over the positive d, zeros left out of the ranking
    (scipy's default zero_method, "wilcox")."""
    from scipy.stats import rankdata

    magnitudes = np.where(differences == 0, np.nan, np.abs(differences))
    ranks = rankdata(magnitudes, axis=axis, nan_policy="omit")
    return np.where(differences > 0, ranks, 0.0).sum(axis=axis)
