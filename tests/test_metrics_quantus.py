"""Our localisation metrics against Quantus (Hedström et al., JMLR 2023), the reference
implementation of explanation metrics, on the same heatmaps and masks.

Quantus' `evaluate_batch` takes the attributions as given; its `__call__` would first normalise
them and may take absolute values, which our metrics leave to the explainers (every heatmap is
already non-negative). The maps below are continuous random draws, so no two pixels tie, except
where a test makes a tie on purpose.
"""

import numpy as np
import pytest
import quantus
import torch

from medxgan.evaluate import metrics

SIZE = 32


def discs(radii: list[float], seed: int = 0) -> torch.Tensor:
    """Boolean (N, SIZE, SIZE) masks: one disc per image at a random centre, radius 0 = one pixel."""
    rng = torch.Generator().manual_seed(seed)
    rows, cols = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    masks = []
    for radius in radii:
        r, c = torch.randint(4, SIZE - 4, (2,), generator=rng)
        masks.append((rows - r) ** 2 + (cols - c) ** 2 <= radius ** 2)
    return torch.stack(masks)


@pytest.fixture(scope="module")
def case() -> tuple[torch.Tensor, torch.Tensor]:
    """Heatmaps that are partly drawn to the lesion (so scores span their range) and their masks."""
    masks = discs([0, 1, 2, 3, 5, 8, 2, 4])
    noise = torch.rand(masks.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    pull = torch.linspace(0, 1.5, len(masks), dtype=torch.float64)[:, None, None]
    return noise + pull * masks, masks


def quantus_scores(metric, heatmaps: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
    a, s = heatmaps[:, None].numpy(), masks[:, None].numpy()
    return np.asarray(metric.evaluate_batch(a_batch=a, s_batch=s, x_batch=a, y_batch=None, model=None), dtype=float)


def test_pointing_game_equals_quantus(case):
    heatmaps, masks = case
    ours = metrics.pointing_game(heatmaps, masks).numpy()
    assert 0 < ours.sum() < len(ours)  # hits and misses both occur
    np.testing.assert_array_equal(ours, quantus_scores(quantus.PointingGame(disable_warnings=True), heatmaps, masks))


def test_pointing_game_counts_a_tied_maximum_inside_the_lesion_as_quantus_does():
    heatmaps, masks = torch.zeros(1, SIZE, SIZE), discs([2])
    heatmaps[0, 0, 0] = 1.0
    heatmaps[masks] = 1.0  # the maximum is reached outside and inside the lesion
    assert metrics.pointing_game(heatmaps, masks).item() == 1.0
    assert quantus_scores(quantus.PointingGame(disable_warnings=True), heatmaps, masks).item() == 1.0


def test_mass_in_lesion_is_quantus_relevance_mass_accuracy(case):
    heatmaps, masks = case
    np.testing.assert_allclose(metrics.mass_in_lesion(heatmaps, masks).numpy(),
                               quantus_scores(quantus.RelevanceMassAccuracy(disable_warnings=True), heatmaps, masks),
                               rtol=1e-6)  # ours sums in float32


def test_mass_in_lesion_of_an_empty_heatmap_is_zero_where_quantus_gives_nan():
    """The one definitional difference: an all-zero map has no mass to place. We score it 0 (it
    found nothing), Quantus NaN (0 / 0), which would drop the image from a mean."""
    heatmaps, masks = torch.zeros(1, SIZE, SIZE), discs([3])
    assert metrics.mass_in_lesion(heatmaps, masks).item() == 0.0
    with np.errstate(invalid="ignore"):
        assert np.isnan(quantus_scores(quantus.RelevanceMassAccuracy(disable_warnings=True), heatmaps, masks)).all()


def test_relevance_rank_accuracy_equals_quantus(case):
    heatmaps, masks = case
    np.testing.assert_allclose(metrics.relevance_rank_accuracy(heatmaps, masks).numpy(),
                               quantus_scores(quantus.RelevanceRankAccuracy(disable_warnings=True), heatmaps, masks),
                               rtol=0, atol=1e-7)


@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.2])
def test_top_k_intersection_is_the_overlap_behind_our_top_k_iou_and_dice(case, fraction):
    """Quantus' TopKIntersection is |top-k region & mask| / k; we report that overlap as IoU and Dice
    against the mask instead. Both are recovered from it: I = Dice (k + m) / 2, IoU = I / (k + m - I)."""
    heatmaps, masks = case
    k = metrics.top_k_count(fraction, SIZE, SIZE)
    intersection = quantus_scores(quantus.TopKIntersection(k=k, disable_warnings=True), heatmaps, masks) * k
    area = masks.flatten(1).sum(1).numpy()
    np.testing.assert_allclose(metrics.top_k_dice(heatmaps, masks, fraction).numpy(), 2 * intersection / (k + area),
                               rtol=1e-6)
    np.testing.assert_allclose(metrics.top_k_iou(heatmaps, masks, fraction).numpy(),
                               intersection / (k + area - intersection), rtol=1e-6)


def test_mask_auroc_equals_quantus_auc(case):
    heatmaps, masks = case
    np.testing.assert_allclose(metrics.mask_auroc(heatmaps, masks).numpy(),
                               quantus_scores(quantus.AUC(disable_warnings=True), heatmaps, masks), rtol=0, atol=1e-6)


def test_mask_auroc_scores_tied_pixels_as_quantus_does():
    # a map of few levels: many ties inside and outside the mask, counted half as sklearn counts them
    heatmaps, masks = case_with_levels()
    np.testing.assert_allclose(metrics.mask_auroc(heatmaps, masks).numpy(),
                               quantus_scores(quantus.AUC(disable_warnings=True), heatmaps, masks), rtol=0, atol=1e-6)


def case_with_levels() -> tuple[torch.Tensor, torch.Tensor]:
    masks = discs([3, 5, 6], seed=3)
    levels = torch.randint(0, 4, masks.shape, generator=torch.Generator().manual_seed(4)).double()
    return levels + 2.0 * masks * (torch.rand(masks.shape, generator=torch.Generator().manual_seed(5)) > 0.5), masks
