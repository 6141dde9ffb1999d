import pytest
import torch

from medxgan.metrics import (
    mask_auroc, mass_in_lesion, perturb_top_k, pointing_game, probability_drop, reconstruction_mse,
    reconstruction_ssim,
)
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
