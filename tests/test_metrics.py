import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from scipy.stats import bootstrap, mannwhitneyu, spearmanr, wilcoxon
from torch import nn
from torchmetrics.functional.image import structural_similarity_index_measure
from torchvision.transforms.functional import gaussian_blur

from medxgan.data.manifest import IMAGE_RANGE
from medxgan.inversion import reconstruction_mse, reconstruction_ssim
from medxgan.evaluate.metrics import LESION_SUPPORT_THRESHOLD, baseline_image, bootstrap_ci, curve_auc, deletion_curve, insertion_curve, mask_auroc, mass_in_lesion, min_max_normalise, paired_wilcoxon, perturb_top_k, pixel_spearman, pointing_game, probability_drop, _step_counts, relevance_rank_accuracy, relevance_ranks, squared_error_in_and_outside, top_k_count, top_k_dice, top_k_iou, twin_difference, twin_difference_mass, twin_difference_spearman
from medxgan.nets.networks import positive_probability
from helpers import RegionClassifier

SIZE = 16


def square_masks(n: int = 2, lo: int = 4, hi: int = 10) -> torch.Tensor:
    masks = torch.zeros(n, SIZE, SIZE, dtype=torch.bool)
    masks[:, lo:hi, lo:hi] = True
    return masks


def test_heatmap_equal_to_mask_scores_one():
    masks = square_masks()
    heatmaps = masks.float()
    assert torch.equal(pointing_game(heatmaps, masks), torch.ones(2))
    assert torch.equal(mass_in_lesion(heatmaps, masks), torch.ones(2))
    assert torch.equal(mask_auroc(heatmaps, masks), torch.ones(2))


def test_inverse_heatmap_scores_zero():
    masks = square_masks()
    heatmaps = (~masks).float()
    assert torch.equal(pointing_game(heatmaps, masks), torch.zeros(2))
    assert torch.equal(mass_in_lesion(heatmaps, masks), torch.zeros(2))
    assert torch.equal(mask_auroc(heatmaps, masks), torch.zeros(2))


def test_constant_heatmap():
    masks = square_masks()
    heatmaps = torch.full((2, SIZE, SIZE), 0.7)
    assert torch.equal(mask_auroc(heatmaps, masks), torch.full((2,), 0.5))
    # Ties: a hit when the maximum over the mask equals the global maximum.
    assert torch.equal(pointing_game(heatmaps, masks), torch.ones(2))
    torch.testing.assert_close(mass_in_lesion(heatmaps, masks), torch.full((2,), 36 / 256))


def test_pointing_game_single_peak():
    masks = square_masks()
    heatmaps = torch.zeros(2, SIZE, SIZE)
    heatmaps[0, 5, 5] = 1.0  # inside
    heatmaps[1, 12, 12] = 1.0  # outside
    assert pointing_game(heatmaps, masks).tolist() == [1.0, 0.0]


def test_zero_heatmap_has_zero_mass_in_lesion():
    assert torch.equal(mass_in_lesion(torch.zeros(2, SIZE, SIZE), square_masks()), torch.zeros(2))


def test_mask_auroc_is_the_mann_whitney_statistic_whatever_the_heatmaps_offset():
    # AUROC = U / (n_inside * n_outside); it depends only on the order of the heatmap's values
    generator = torch.Generator().manual_seed(6)
    heatmaps = torch.rand(3, SIZE, SIZE, generator=generator) + square_masks(3).float() * 0.3
    masks = square_masks(3)
    masks[0] = False  # no mask: NaN, and the images after it are still scored
    expected = [float("nan")]
    for heatmap, mask in zip(heatmaps[1:].flatten(1), masks[1:].flatten(1)):
        inside, outside = heatmap[mask].numpy(), heatmap[~mask].numpy()
        expected.append(mannwhitneyu(inside, outside).statistic / (len(inside) * len(outside)))
    for offset in (0.0, 100.0, -100.0):
        torch.testing.assert_close(mask_auroc(heatmaps + offset, masks), torch.tensor(expected), equal_nan=True,
                                   rtol=0, atol=1e-6)


def test_relevance_ranks_break_ties_by_pixel_position():
    heatmaps = torch.zeros(1, 64, 64)
    heatmaps[0, 1, 36] = 1.0  # pixel 100 ranks first, then every tied pixel in raster order
    expected = torch.tensor([100] + [i for i in range(64 * 64) if i != 100])
    assert torch.equal(relevance_ranks(heatmaps).flatten().argsort(), expected)


def test_top_k_count_takes_fractions_from_none_to_all_and_names_others():
    assert (top_k_count(0.0, 4, 5), top_k_count(0.25, 4, 5), top_k_count(1.0, 4, 5)) == (0, 5, 20)
    for fraction in (-0.1, 1.5):
        with pytest.raises(ValueError, match=rf"^fraction must lie in \[0, 1\], got {fraction}$"):
            top_k_count(fraction, 4, 5)


def test_relevance_rank_accuracy_of_a_one_pixel_lesion():
    heatmaps, masks = torch.zeros(2, SIZE, SIZE), torch.zeros(2, SIZE, SIZE, dtype=torch.bool)
    masks[:, 3, 4] = True
    heatmaps[0, 3, 4], heatmaps[1, 9, 9] = 1.0, 1.0  # the top pixel on the lesion, then beside it
    assert relevance_rank_accuracy(heatmaps, masks).tolist() == [1.0, 0.0]


def test_mask_auroc_is_undefined_for_empty_mask():
    assert torch.isnan(mask_auroc(torch.rand(1, SIZE, SIZE), torch.zeros(1, SIZE, SIZE, dtype=torch.bool))).all()


def test_random_heatmap_mass_matches_mask_area():
    torch.manual_seed(0)
    n, size = 100, 32
    heatmaps = torch.rand(n, size, size)
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    for mask, side in zip(masks, torch.randint(4, 28, (n,)).tolist()):
        mask[:side, :side] = True
    area = masks.flatten(1).float().mean(dim=1)
    error = mass_in_lesion(heatmaps, masks) - area
    assert error.abs().max() < 0.05  # per-image standard deviation is about 0.01
    assert error.mean().abs() < 0.01


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5])
def test_perturb_top_k_sets_the_top_pixels_to_the_channel_mean(fraction):
    torch.manual_seed(0)
    images, heatmaps = torch.rand(3, 3, SIZE, SIZE) * 2 - 1, torch.rand(3, SIZE, SIZE)
    perturbed = perturb_top_k(images, heatmaps, fraction)
    k = round(fraction * SIZE * SIZE)
    changed = (perturbed != images).any(dim=1)  # (N, H, W)
    top = torch.zeros_like(changed).flatten(1).scatter_(1, heatmaps.flatten(1).topk(k, dim=1).indices, True)
    assert torch.equal(changed, top.view_as(changed))
    assert (changed.flatten(1).sum(dim=1) == k).all()
    means = images.mean(dim=(2, 3))  # (N, C)
    for image, mask, mean in zip(perturbed, changed, means):
        torch.testing.assert_close(image[:, mask], mean[:, None].expand(-1, k))


def test_probability_drop_is_larger_on_the_driving_region():
    torch.manual_seed(0)
    classifier = RegionClassifier(4, 10).eval()
    images = torch.rand(4, 1, SIZE, SIZE) * 2 - 1
    images[:, :, 4:10, 4:10] = 1.0  # a bright region makes the positive call
    on_region = square_masks(4).float()
    elsewhere = (~square_masks(4)).float()
    fraction = 36 / (SIZE * SIZE)  # exactly the region's size
    drop_on = probability_drop(classifier, images, on_region, fraction)
    drop_elsewhere = probability_drop(classifier, images, elsewhere, fraction)
    assert (drop_on > 0.3).all()
    torch.testing.assert_close(drop_elsewhere, torch.zeros(4))


def test_reconstruction_scores():
    torch.manual_seed(0)
    images = torch.rand(3, 1, 32, 32) * 2 - 1
    assert torch.equal(reconstruction_mse(images, images), torch.zeros(3))
    torch.testing.assert_close(reconstruction_mse(images + 0.5, images), torch.full((3,), 0.25))
    torch.testing.assert_close(reconstruction_ssim(images, images), torch.ones(3))
    ssim_noisy = reconstruction_ssim(images + 0.3 * torch.randn_like(images), images)
    assert ssim_noisy.shape == (3,) and (ssim_noisy < 0.9).all()


MASK_SHARE = 36 / (SIZE * SIZE)  # area share of square_masks()


def test_region_scores_for_heatmap_equal_to_mask_and_its_inverse():
    masks = square_masks()
    assert torch.equal(relevance_rank_accuracy(masks.float(), masks), torch.ones(2))
    assert torch.equal(top_k_iou(masks.float(), masks, MASK_SHARE), torch.ones(2))
    assert torch.equal(top_k_dice(masks.float(), masks, MASK_SHARE), torch.ones(2))
    assert torch.equal(relevance_rank_accuracy((~masks).float(), masks), torch.zeros(2))
    assert torch.equal(top_k_iou((~masks).float(), masks, MASK_SHARE), torch.zeros(2))
    assert torch.equal(top_k_dice((~masks).float(), masks, MASK_SHARE), torch.zeros(2))


def partial_overlap_case() -> tuple[torch.Tensor, torch.Tensor]:
    """4x4: mask = top-left 2x2; ranked pixels (0,0) > (0,1) > (2,2) > (3,3) > (1,0) > the rest."""
    masks = torch.zeros(1, 4, 4, dtype=torch.bool)
    masks[0, :2, :2] = True
    heatmaps = torch.zeros(1, 4, 4)
    for value, (row, col) in zip([1.0, 0.9, 0.8, 0.7, 0.6], [(0, 0), (0, 1), (2, 2), (3, 3), (1, 0)]):
        heatmaps[0, row, col] = value
    return heatmaps, masks


def test_region_scores_for_a_partial_overlap():
    heatmaps, masks = partial_overlap_case()
    # K = 4: (0,0), (0,1) hit, (2,2), (3,3) miss.
    torch.testing.assert_close(relevance_rank_accuracy(heatmaps, masks), torch.tensor([0.5]))
    # Top 4 pixels: overlap 2, union 6.
    torch.testing.assert_close(top_k_iou(heatmaps, masks, 0.25), torch.tensor([2 / 6]))
    torch.testing.assert_close(top_k_dice(heatmaps, masks, 0.25), torch.tensor([4 / 8]))
    # Top 2 pixels: both in the mask; overlap 2, union 4.
    torch.testing.assert_close(top_k_iou(heatmaps, masks, 0.125), torch.tensor([2 / 4]))
    torch.testing.assert_close(top_k_dice(heatmaps, masks, 0.125), torch.tensor([4 / 6]))


def test_relevance_rank_accuracy_is_undefined_for_empty_mask():
    empty = torch.zeros(1, SIZE, SIZE, dtype=torch.bool)
    assert torch.isnan(relevance_rank_accuracy(torch.rand(1, SIZE, SIZE), empty)).all()


def evidence_case(n: int = 4) -> tuple[RegionClassifier, torch.Tensor]:
    """RegionClassifier on rows/cols [4, 10) and images that are bright exactly there."""
    torch.manual_seed(0)
    images = torch.rand(n, 1, SIZE, SIZE) * 2 - 1
    images[:, :, 4:10, 4:10] = 1.0
    return RegionClassifier(4, 10).eval(), images


def test_deletion_and_insertion_favour_the_heatmap_on_the_evidence():
    classifier, images = evidence_case()
    on_evidence, inverse = square_masks(4).float(), (~square_masks(4)).float()
    baseline = baseline_image(images, "mean")
    deletion = {name: curve_auc(deletion_curve(classifier, images, maps, baseline, steps=8))
                for name, maps in [("on", on_evidence), ("inverse", inverse)]}
    insertion = {name: curve_auc(insertion_curve(classifier, images, maps, baseline, steps=8))
                 for name, maps in [("on", on_evidence), ("inverse", inverse)]}
    assert (deletion["on"] < deletion["inverse"] - 0.1).all()
    assert (insertion["on"] > insertion["inverse"] + 0.1).all()


@pytest.mark.parametrize("kind", ["mean", "blur"])
def test_curves_run_from_image_to_baseline(kind):
    classifier, images = evidence_case(3)
    heatmaps, baseline, steps = torch.rand(3, SIZE, SIZE), baseline_image(images, kind), 5
    deletion = deletion_curve(classifier, images, heatmaps, baseline, steps)
    insertion = insertion_curve(classifier, images, heatmaps, baseline, steps)
    p_image, p_baseline = positive_probability(classifier, images), positive_probability(classifier, baseline)
    assert deletion.shape == insertion.shape == (3, steps + 1)
    torch.testing.assert_close(deletion[:, 0], p_image.detach())
    torch.testing.assert_close(deletion[:, -1], p_baseline.detach())
    torch.testing.assert_close(insertion[:, 0], p_baseline.detach())
    torch.testing.assert_close(insertion[:, -1], p_image.detach())
    assert not torch.equal(p_image, p_baseline)  # the baseline removes evidence


def test_curves_do_not_depend_on_batch_size():
    classifier, images = evidence_case(3)
    heatmaps, baseline = torch.rand(3, SIZE, SIZE), baseline_image(images, "mean")
    whole = deletion_curve(classifier, images, heatmaps, baseline, steps=4)
    torch.testing.assert_close(deletion_curve(classifier, images, heatmaps, baseline, steps=4, batch_size=3), whole)


def test_curves_leave_the_classifier_as_it_was():
    classifier, images = evidence_case(2)
    classifier.train()
    insertion_curve(classifier, images, torch.rand(2, SIZE, SIZE), baseline_image(images, "blur"), steps=2)
    assert classifier.training and classifier.gain.requires_grad


def test_unknown_baseline_raises():
    with pytest.raises(ValueError, match="sharpen"):
        baseline_image(torch.zeros(1, 1, SIZE, SIZE), "sharpen")


def test_mean_baseline_is_the_channel_mean():
    images = torch.rand(2, 3, SIZE, SIZE)
    torch.testing.assert_close(baseline_image(images, "mean")[:, :, 3, 7], images.mean(dim=(2, 3)))


def test_curve_auc_uses_the_unit_interval():
    curves = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.5, 1.0], [1.0, 0.0, 0.0]])
    torch.testing.assert_close(curve_auc(curves), torch.tensor([1.0, 0.5, 0.25]))


def test_min_max_normalise_maps_each_heatmap_onto_the_unit_interval():
    maps = torch.rand(3, 5, 7, generator=torch.Generator().manual_seed(1)) * 0.5 + torch.tensor([2.0, -1.0, 0.0])[:, None, None]
    low, high = maps.amin(dim=(1, 2), keepdim=True), maps.amax(dim=(1, 2), keepdim=True)
    torch.testing.assert_close(min_max_normalise(maps), (maps - low) / (high - low))
    assert torch.equal(min_max_normalise(torch.full((2, 4, 4), 3.0)), torch.zeros(2, 4, 4))  # no span: all zeros


def test_curve_auc_is_the_float64_trapezoid_rule_rounded_once():
    # 21 grid points are not exact in float32; a float32 grid moves some areas by one ulp
    curves = torch.rand(64, 21, generator=torch.Generator().manual_seed(0))
    exact = np.trapezoid(curves.double().numpy(), np.linspace(0.0, 1.0, 21), axis=1)
    torch.testing.assert_close(curve_auc(curves), torch.from_numpy(exact).float(), rtol=0, atol=0)


@pytest.mark.parametrize("pixels", [7, 64 * 64, 4097 * 4097])
def test_step_counts_are_exact_for_images_past_float32s_integers(pixels):
    # 4097 x 4097 pixels is past 2**24, the last integer float32 holds exactly
    exact = [round(Fraction(i * pixels, 20)) for i in range(21)]
    assert _step_counts(20, pixels).tolist() == exact


def test_bootstrap_ci():
    values = torch.randn(40, generator=torch.Generator().manual_seed(0)) + 3.0
    low, high = bootstrap_ci(values)
    assert low < values.mean().item() < high
    assert bootstrap_ci(values, seed=5) == bootstrap_ci(values, seed=5)
    many = torch.randn(4000, generator=torch.Generator().manual_seed(1)) + 3.0
    many_low, many_high = bootstrap_ci(many)
    assert many_high - many_low < (high - low) / 4  # width shrinks like 1 / sqrt(n)


def test_bootstrap_ci_defaults_to_1000_percentile_resamples_at_95_percent_seeded_by_0():
    # the defaults behind every interval in the results; float32 input is read as float64
    values = torch.rand(30, generator=torch.Generator().manual_seed(3))
    sample = values.double().numpy()
    expected = bootstrap((sample,), np.mean, n_resamples=1000, confidence_level=0.95, method="percentile",
                         rng=np.random.default_rng(0)).confidence_interval
    assert bootstrap_ci(values) == (expected.low, expected.high)
    half = bootstrap((sample,), np.mean, n_resamples=1000, confidence_level=0.5, method="percentile",
                     rng=np.random.default_rng(0)).confidence_interval
    assert bootstrap_ci(values, confidence=0.5) == (half.low, half.high)


def test_bootstrap_ci_drops_nans():
    assert bootstrap_ci([1.0, float("nan"), 1.0]) == (1.0, 1.0)
    assert bootstrap_ci([2.0, float("nan")]) == (2.0, 2.0)  # one value left: its own interval
    assert all(math.isnan(bound) for bound in bootstrap_ci([float("nan")]))


def test_paired_wilcoxon():
    a, noise = torch.rand(2, 20, generator=torch.Generator().manual_seed(0))
    assert paired_wilcoxon(a + 1.0 + 0.1 * noise, a) < 1e-4  # every difference is positive
    assert math.isnan(paired_wilcoxon(a, a))  # all differences zero
    assert math.isnan(paired_wilcoxon([1.0, float("nan")], [0.0, 2.0]))  # one pair left


@pytest.mark.parametrize("pairs", range(2, 17))
def test_paired_wilcoxon_gives_scipys_p_value_with_ties_zeros_and_none(pairs: int):
    """Below EXACT_WILCOXON_PAIRS the sign flips are enumerated here, not by scipy: the p-value must
    be scipy's to the last bit, for tied and zero differences (its permutation test) and for
    distinct ones (its exact distribution)."""
    rng = np.random.default_rng(pairs)
    for differences in (rng.integers(-3, 4, pairs).astype(np.float64) / 2, rng.normal(size=pairs)):
        if differences.any():
            assert paired_wilcoxon(differences, np.zeros(pairs)) == wilcoxon(differences).pvalue, differences


def test_pointing_game_misses_when_the_lesion_holds_only_a_lower_peak():
    # The lesion's own maximum (0.9) is high, but the global peak (1.0) lies outside it: a miss.
    masks = square_masks(n=1)
    heatmaps = torch.zeros(1, SIZE, SIZE)
    heatmaps[0, 5, 5] = 0.9   # inside the mask
    heatmaps[0, 13, 13] = 1.0  # outside
    assert pointing_game(heatmaps, masks).tolist() == [0.0]
    heatmaps[0, 5, 5] = 1.0    # the lesion now ties with the global peak: a hit
    assert pointing_game(heatmaps, masks).tolist() == [1.0]


class MeanClassifier(nn.Module):
    """Positive logit = GAIN x the image's mean: p_pos after k pixels swapped is known exactly."""

    GAIN = 3.0

    def forward(self, x):
        score = self.GAIN * x.mean(dim=(1, 2, 3))
        return torch.stack([torch.zeros_like(score), score], dim=1)


def expected_swap_curve(start: float, end: float, pixels: int, steps: int) -> torch.Tensor:
    """p_pos of a constant `start` image with k of its pixels set to `end`, k = round(i * pixels / steps)."""
    taken = torch.tensor([round(i * pixels / steps) for i in range(steps + 1)], dtype=torch.float64)
    mean = (start * (pixels - taken) + end * taken) / pixels
    return torch.sigmoid(MeanClassifier.GAIN * mean).float()


@pytest.mark.parametrize("steps, batch_size", [(1, 256), (7, 256), (7, 3), (20, 5)])
def test_deletion_and_insertion_swap_round_i_over_steps_of_the_pixels(steps, batch_size):
    # Constant images make the curve depend only on how many pixels were swapped at each step.
    images, baseline = torch.ones(2, 1, SIZE, SIZE), torch.full((2, 1, SIZE, SIZE), -1.0)
    heatmaps = torch.rand(2, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    pixels = SIZE * SIZE
    deletion = deletion_curve(MeanClassifier(), images, heatmaps, baseline, steps, batch_size)
    insertion = insertion_curve(MeanClassifier(), images, heatmaps, baseline, steps, batch_size)
    torch.testing.assert_close(deletion, expected_swap_curve(1.0, -1.0, pixels, steps).expand(2, -1))
    torch.testing.assert_close(insertion, expected_swap_curve(-1.0, 1.0, pixels, steps).expand(2, -1))


def test_deletion_defaults_to_twenty_steps():
    images, baseline = torch.ones(1, 1, SIZE, SIZE), torch.full((1, 1, SIZE, SIZE), -1.0)
    for curve in (deletion_curve, insertion_curve):
        assert curve(MeanClassifier(), images, torch.rand(1, SIZE, SIZE), baseline).shape == (1, 21)


def test_deletion_takes_the_highest_ranked_pixels_first():
    # Pixels of value +1 (left half) and -1 (right half); the heatmap ranks the right half first, so
    # deleting to 0 raises p_pos first (the -1s go), then lowers it, ending at p(0) = 0.5.
    images = torch.ones(1, 1, SIZE, SIZE)
    images[..., SIZE // 2:] = -1.0
    heatmaps = torch.zeros(1, SIZE, SIZE)
    heatmaps[:, :, SIZE // 2:] = 1.0
    curve = deletion_curve(MeanClassifier(), images, heatmaps, torch.zeros_like(images), steps=2)[0]
    torch.testing.assert_close(curve, torch.sigmoid(torch.tensor([0.0, MeanClassifier.GAIN / 2, 0.0])))


def test_probability_drop_is_the_change_when_the_top_pixels_go_to_the_mean():
    # A constant image's mean is itself: nothing changes. Half +1, half -1 has mean 0; setting
    # the top half (the -1s) to 0 moves p_pos from sigmoid(0) to sigmoid(GAIN / 2).
    constant = torch.full((1, 1, SIZE, SIZE), 0.4)
    assert probability_drop(MeanClassifier(), constant, torch.rand(1, SIZE, SIZE), 0.3).abs().max() < 1e-6
    images = torch.ones(1, 1, SIZE, SIZE)
    images[..., SIZE // 2:] = -1.0
    heatmaps = torch.zeros(1, SIZE, SIZE)
    heatmaps[:, :, SIZE // 2:] = 1.0
    drop = probability_drop(MeanClassifier(), images, heatmaps, 0.5)
    torch.testing.assert_close(drop, torch.tensor([0.5]) - torch.sigmoid(torch.tensor([MeanClassifier.GAIN / 2])))


def test_blur_baseline_follows_rise():
    images = torch.rand(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(baseline_image(images, "blur"), gaussian_blur(images, kernel_size=11, sigma=5.0))


def test_reconstruction_ssim_treats_images_as_spanning_minus_one_to_one():
    # SSIM is unchanged when images and data range scale together (its constants scale with the
    # range): data range 2 on these images is data range 1 on the images halved. The images span
    # a quarter of [-1, 1], so a range read off the data instead would give other values.
    generator = torch.Generator().manual_seed(4)
    a = (torch.rand(3, 1, SIZE, SIZE, generator=generator) * 2 - 1) / 4
    b = a + 0.1 * torch.randn(3, 1, SIZE, SIZE, generator=generator)
    expected = structural_similarity_index_measure(b / 2, a / 2, data_range=1.0, reduction="none")
    torch.testing.assert_close(reconstruction_ssim(b, a), expected)
    assert reconstruction_ssim(b, a).shape == (3,)


def test_paired_wilcoxon_needs_two_non_zero_paired_differences():
    assert math.isnan(paired_wilcoxon([1.0], [0.0]))  # one pair
    assert math.isnan(paired_wilcoxon([1.0, 2.0], [1.0, 2.0]))  # no difference at all
    assert math.isnan(paired_wilcoxon([1.0, float("nan")], [0.0, 0.0]))  # one pair once NaNs go
    assert not math.isnan(paired_wilcoxon([1.0, 2.0], [0.0, 0.5]))  # two pairs are enough
    a, b = [0.1, 0.5, float("nan"), 0.9, 0.3, 0.8], [0.2, 0.1, 0.4, 0.3, float("nan"), 0.1]
    # NaN on either side drops the pair, and only that pair
    assert paired_wilcoxon(a, b) == pytest.approx(wilcoxon([0.1 - 0.2, 0.5 - 0.1, 0.9 - 0.3, 0.8 - 0.1]).pvalue)


# --- healthy twins: the lesion's true effect -----------------------------------------------------

GREY_LEVEL = IMAGE_RANGE / 255  # one 8-bit grey level on the [-1, 1] scale


def twins_and_lesions(n: int = 8, channels: int = 1, side: int = 32, seed: int = 0):
    """Random images, and their twins: the images without a smooth, bright lesion of varying strength
    in a square of each image."""
    generator = torch.Generator().manual_seed(seed)
    twins = torch.rand(n, channels, side, side, generator=generator) * 1.5 - 1
    lesions = torch.zeros(n, 1, side, side)
    lesions[:, :, 8:20, 10:24] = 0.05 + 0.4 * torch.rand(n, 1, 12, 14, generator=generator)
    return (twins + lesions).clamp(-1, 1), twins


@pytest.mark.parametrize("channels", [1, 3])
def test_a_heatmap_equal_to_the_twin_difference_scores_one(channels):
    images, twins = twins_and_lesions(channels=channels)
    differences = twin_difference(images, twins)
    assert differences.shape == (8, 32, 32)
    torch.testing.assert_close(twin_difference_spearman(differences, differences), torch.ones(8))
    torch.testing.assert_close(twin_difference_mass(differences, differences), torch.ones(8))


def test_a_random_heatmap_agrees_with_the_twin_difference_by_chance_only():
    images, twins = twins_and_lesions(n=32)
    differences = twin_difference(images, twins)
    heatmaps = torch.rand(32, 32, 32, generator=torch.Generator().manual_seed(1))
    assert twin_difference_spearman(heatmaps, differences).mean().abs() < 0.05
    # chance level of the mass is the changed pixels' share of the image
    changed_share = (differences > LESION_SUPPORT_THRESHOLD).flatten(1).float().mean(dim=1)
    torch.testing.assert_close(twin_difference_mass(heatmaps, differences).mean(), changed_share.mean(), atol=0.03,
                               rtol=0)


def test_twin_difference_spearman_is_scipys_per_image():
    images, twins = twins_and_lesions(n=3)
    differences = twin_difference(images, twins)
    heatmaps = differences + 0.3 * torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(2))
    expected = [spearmanr(h.flatten(), d.flatten()).statistic for h, d in zip(heatmaps, differences)]
    torch.testing.assert_close(twin_difference_spearman(heatmaps, differences), torch.tensor(expected).float())
    torch.testing.assert_close(pixel_spearman(heatmaps, differences), torch.tensor(expected).float())


def test_twin_scores_are_nan_where_the_twin_is_the_image():
    images, twins = twins_and_lesions(n=2)
    twins[1] = images[1]
    differences = twin_difference(images, twins)
    heatmaps = torch.rand(2, 32, 32, generator=torch.Generator().manual_seed(3))
    for scores in (twin_difference_spearman(heatmaps, differences), twin_difference_mass(heatmaps, differences)):
        assert not scores[0].isnan() and scores[1].isnan()


def test_twin_difference_spearman_is_nan_where_the_difference_is_uniform():
    """A twin that differs by the same amount everywhere leaves no pixel order to compare with, beside
    an image whose lesion changed some pixels and not others."""
    images, twins = twins_and_lesions(n=2)
    differences = twin_difference(images, twins)
    differences[1] = 0.3
    heatmaps = torch.rand(2, 32, 32, generator=torch.Generator().manual_seed(4))
    scores = twin_difference_spearman(heatmaps, differences)
    assert not scores[0].isnan() and scores[1].isnan()


def test_twin_difference_mass_counts_only_differences_above_the_threshold():
    differences = torch.zeros(1, SIZE, SIZE)
    differences[:, :4] = 0.25  # at the threshold: not the lesion's
    differences[:, 4:8] = 0.5
    heatmaps = torch.zeros(1, SIZE, SIZE)
    heatmaps[:, :8] = 1.0
    torch.testing.assert_close(twin_difference_mass(heatmaps, differences, threshold=0.25), torch.tensor([0.5]))
    assert twin_difference_mass(heatmaps, differences, threshold=0.5).isnan().all()


def test_the_lesion_support_is_a_whole_grey_level_of_difference():
    """PNG rounding of two equal images leaves no difference; a change below half a grey level is not
    the lesion's, one of a whole level is."""
    twins = torch.zeros(1, 1, SIZE, SIZE)
    images = twins.clone()
    images[:, :, :4] += 0.4 * GREY_LEVEL  # rows 0-3: below the threshold
    images[:, :, 4:8] += GREY_LEVEL  # rows 4-7: the lesion
    heatmaps = torch.zeros(1, SIZE, SIZE)
    heatmaps[:, :8] = 1.0  # half its mass on the faint rows, half on the lesion's
    torch.testing.assert_close(twin_difference_mass(heatmaps, twin_difference(images, twins)), torch.tensor([0.5]))


def test_squared_error_in_and_outside_the_mask():
    targets = torch.rand(3, 2, SIZE, SIZE, generator=torch.Generator().manual_seed(5)) * 2 - 1
    masks = square_masks(3)
    masks[2] = False  # no lesion: nothing inside to score
    predictions = targets.clone()
    predictions[:, 0][masks] += 0.5  # one channel of two wrong inside the lesion: 0.25 / 2
    predictions[1, :, 0, 0] -= 0.2  # image 1 also wrong at one pixel outside it
    inside, outside = squared_error_in_and_outside(predictions, targets, masks)
    torch.testing.assert_close(inside[:2], torch.full((2,), 0.125))
    assert inside[2].isnan()
    torch.testing.assert_close(outside, torch.tensor([0.0, 0.04 / (SIZE * SIZE - 36), 0.0]))
