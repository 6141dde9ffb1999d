import math
import re

import pytest
import torch
import torch.nn.functional as F
from torchmetrics.functional.image import structural_similarity_index_measure

from helpers import RegionClassifier
from medxgan.explainers import IntegratedGradients
from medxgan.evaluate.metrics import heatmap_similarity, min_max_normalise
from medxgan.evaluate.robustness import add_noise, max_sensitivity, noise_robustness

SIZE = 32  # RegionClassifier's default region, rows/cols 8..24, fits inside


def smooth_images(count: int, seed: int = 0, coarse: int = 4, amplitude: float = 0.4) -> torch.Tensor:
    """(count, 1, SIZE, SIZE) images in [-1, 1] with large-scale structure: upsampled coarse noise."""
    coarse_noise = torch.randn(count, 1, coarse, coarse, generator=torch.Generator().manual_seed(seed))
    images = amplitude * F.interpolate(coarse_noise, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    return images.clamp(-1, 1)


def box_blur(images: torch.Tensor, width: int = 5) -> torch.Tensor:
    """A Lipschitz-smooth explainer: the first channel, box-blurred."""
    return F.avg_pool2d(images[:, :1], width, stride=1, padding=width // 2, count_include_pad=False)[:, 0]


# add_noise

def test_add_noise_is_deterministic_by_seed():
    images = smooth_images(3)
    assert torch.equal(add_noise(images, 0.1, seed=3), add_noise(images, 0.1, seed=3))
    assert not torch.equal(add_noise(images, 0.1, seed=3), add_noise(images, 0.1, seed=4))


def test_add_noise_has_std_sigma_on_mid_grey():
    images, sigma = torch.zeros(4, 1, SIZE, SIZE), 0.1  # 10 sigma from the clamp: no clipping
    noise = add_noise(images, sigma, seed=0)
    # 4096 draws: the sample std's relative standard error is about 1 / sqrt(2 * 4096) = 1.1%.
    assert noise.std().item() == pytest.approx(sigma, rel=0.05)
    assert noise.mean().item() == pytest.approx(0.0, abs=5 * sigma / math.sqrt(noise.numel()))


def test_add_noise_is_clamped_to_the_image_range():
    noisy = add_noise(smooth_images(2), sigma=5.0, seed=0)
    assert noisy.min() == -1.0 and noisy.max() == 1.0


def test_add_noise_with_sigma_zero_is_identity():
    images = smooth_images(2)
    assert torch.equal(add_noise(images, 0.0, seed=0), images)


def test_add_noise_per_image_does_not_depend_on_the_batch():
    images = smooth_images(5)
    assert torch.equal(add_noise(images[:2], 0.2, seed=1), add_noise(images, 0.2, seed=1)[:2])


# heatmap_similarity

def test_identical_heatmaps_score_one():
    heatmaps = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))
    scores = heatmap_similarity(heatmaps, heatmaps.clone())
    assert set(scores) == {"spearman", "ssim"}
    for values in scores.values():
        assert values.shape == (3,)
        assert torch.allclose(values, torch.ones(3), atol=1e-4)


def test_reversed_ranking_has_spearman_minus_one():
    heatmaps = torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(1))
    spearman = heatmap_similarity(heatmaps, 5.0 - heatmaps)["spearman"]
    assert torch.allclose(spearman, -torch.ones(2), atol=1e-4)


def test_single_heatmap_gives_shape_one():
    heatmap = torch.rand(1, 16, 16, generator=torch.Generator().manual_seed(2))
    assert all(values.shape == (1,) for values in heatmap_similarity(heatmap, heatmap.sqrt()).values())


def test_heatmap_similarity_ssim_compares_min_max_normalised_maps_on_a_unit_range():
    generator = torch.Generator().manual_seed(3)
    clean, noisy = torch.rand(2, 16, 16, generator=generator), torch.rand(2, 16, 16, generator=generator) * 4 - 2
    expected = structural_similarity_index_measure(min_max_normalise(noisy)[:, None], min_max_normalise(clean)[:, None],
                                                   data_range=1.0, reduction="none")
    torch.testing.assert_close(heatmap_similarity(clean, noisy)["ssim"], expected)


def test_identical_flat_heatmaps_have_ssim_one():
    # nothing to normalise: two all-zero maps, whose range read off the data would be 0
    flat = torch.full((2, 16, 16), 0.5)
    torch.testing.assert_close(heatmap_similarity(flat, flat.clone())["ssim"], torch.ones(2))


@pytest.mark.parametrize("clean_shape, noisy_shape", [((2, 16, 16), (2, 16, 15)), ((16, 16), (16, 16))])
def test_heatmap_similarity_names_stacks_it_cannot_compare(clean_shape, noisy_shape):
    with pytest.raises(ValueError, match=rf"need two \(N, H, W\) heatmap stacks of one shape, got "
                                         rf"{re.escape(str(clean_shape))} and {re.escape(str(noisy_shape))}"):
        heatmap_similarity(torch.zeros(clean_shape), torch.zeros(noisy_shape))


# max_sensitivity

def test_max_sensitivity_of_a_constant_explainer_is_zero():
    def constant(images):
        return torch.ones(len(images), SIZE, SIZE)

    assert torch.equal(max_sensitivity(constant, smooth_images(3), radius=0.1, samples=3, seed=0), torch.zeros(3))


def test_max_sensitivity_of_the_identity_respects_the_ball():
    images, radius = smooth_images(3), 0.05
    sensitivity = max_sensitivity(lambda x: x[:, 0], images, radius=radius, samples=4, seed=0)
    # ||d||_2 <= radius * sqrt(H * W) for d in the L-inf ball (clamping only shrinks it).
    bound = radius * SIZE / images[:, 0].flatten(1).norm(dim=1)
    assert (sensitivity > 0).all() and (sensitivity <= bound * (1 + 1e-5)).all()
    # Uniform draws fill the ball: ||d||_2 concentrates near bound / sqrt(3) over 1024 pixels.
    assert (sensitivity > 0.5 * bound).all()


def test_max_sensitivity_is_deterministic_and_batched():
    calls = []

    def identity(images):
        calls.append(len(images))
        return images[:, 0]

    images = smooth_images(3)
    first = max_sensitivity(identity, images, radius=0.05, samples=4, seed=7)
    assert calls == [3] * 5  # the clean images, then one call per sample over all images
    assert torch.equal(first, max_sensitivity(identity, images, radius=0.05, samples=4, seed=7))
    assert not torch.equal(first, max_sensitivity(identity, images, radius=0.05, samples=4, seed=8))


# noise_robustness

def test_noise_robustness_has_a_row_per_sigma_image_and_metric():
    sigmas = (0.0, 0.1, 0.3)
    table = noise_robustness(box_blur, smooth_images(2), sigmas=sigmas, seed=0)
    assert list(table.columns) == ["sigma", "image", "metric", "value"]
    keys = set(zip(table.sigma, table.image, table.metric))
    assert len(table) == len(keys) == len(sigmas) * 2 * 2
    assert keys == {(s, i, m) for s in sigmas for i in range(2) for m in ("spearman", "ssim")}


def test_smooth_explainer_loses_similarity_as_noise_grows():
    sigmas = (0.0, 0.05, 0.2, 0.8)
    table = noise_robustness(box_blur, smooth_images(4), sigmas=sigmas, seed=0)
    mean_spearman = table[table.metric == "spearman"].groupby("sigma").value.mean()
    assert mean_spearman.is_monotonic_decreasing and mean_spearman.is_unique
    assert table[table.sigma == 0.0].value.to_numpy() == pytest.approx(1.0, abs=1e-4)


def test_integrated_gradients_runs_end_to_end():
    ig = IntegratedGradients(RegionClassifier(), n_steps=8)
    table = noise_robustness(lambda x: ig.attribute(x, target=1), smooth_images(2), sigmas=(0.0, 0.1), seed=0)
    assert len(table) == 2 * 2 * 2
    assert table.value.notna().all() and table.value.abs().le(1.0 + 1e-6).all()
