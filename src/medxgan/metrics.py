"""Per-image scores for explanations and reconstructions; each returns a (N,) float tensor on the CPU.

Heatmaps are non-negative (N, H, W) tensors, masks boolean (N, H, W) lesion masks, images (N, C, H, W)
in [-1, 1].
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchmetrics.functional.image import structural_similarity_index_measure
from torchmetrics.functional.classification import binary_auroc

from medxgan.explainers import frozen, module_device
from medxgan.models import positive_probability

IMAGE_RANGE = 2.0  # images span [-1, 1]


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
    """AUROC of pixel heatmap values against the mask; NaN where the mask is empty or full."""
    scores = []
    for heatmap, mask in zip(heatmaps.flatten(1).float(), masks.flatten(1)):
        if mask.all() or not mask.any():
            scores.append(heatmap.new_tensor(float("nan")))
            continue
        # Min-max scaling keeps the order and stops torchmetrics from squashing values outside [0, 1].
        span = heatmap.max() - heatmap.min()
        preds = (heatmap - heatmap.min()) / span if span > 0 else torch.zeros_like(heatmap)
        scores.append(binary_auroc(preds, mask.long()))
    return torch.stack(scores).cpu()


def perturb_top_k(images: Tensor, heatmaps: Tensor, fraction: float) -> Tensor:
    """Images with the top `fraction` of pixels (by heatmap) set to each image's per-channel mean."""
    n, channels, height, width = images.shape
    k = round(fraction * height * width)
    top = heatmaps.flatten(1).topk(k, dim=1).indices.to(images.device)  # (N, k)
    flat = images.flatten(2).clone()  # (N, C, H*W)
    means = flat.mean(dim=2, keepdim=True).expand(-1, -1, k)
    flat.scatter_(2, top[:, None, :].expand(-1, channels, -1), means)
    return flat.view_as(images)


def probability_drop(classifier: nn.Module, images: Tensor, heatmaps: Tensor, fraction: float) -> Tensor:
    """p_pos(images) - p_pos(images with their top `fraction` pixels set to the mean)."""
    device = module_device(classifier)
    images = images.to(device)
    perturbed = perturb_top_k(images, heatmaps, fraction)
    with frozen(classifier), torch.no_grad():
        return (positive_probability(classifier, images) - positive_probability(classifier, perturbed)).cpu()


def reconstruction_mse(reconstructions: Tensor, images: Tensor) -> Tensor:
    return (reconstructions - images).pow(2).flatten(1).mean(dim=1).cpu()


def reconstruction_ssim(reconstructions: Tensor, images: Tensor) -> Tensor:
    return structural_similarity_index_measure(reconstructions, images, data_range=IMAGE_RANGE,
                                               reduction="none").cpu()
