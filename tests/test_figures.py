"""The disentanglement and perturbation figures: the numbers under their images."""

import pytest
import torch
from helpers import RegionClassifier, calibrate_gan_pair

from medxgan.report import figures
from medxgan.evaluate import metrics
from medxgan.data.manifest import ImageSet
from medxgan.nets.networks import Generator, ResidualCNN, SimpleCNN, positive_probability

NZ1, NZ2, SIZE, COUNT, SEED = 8, 4, 64, 3, 5
FRACTION = 0.1


@pytest.fixture(scope="module")
def networks():
    torch.manual_seed(0)
    generator, classifier = Generator(NZ1, NZ2, SIZE, channels=1, width=0.0625), SimpleCNN(SIZE, 1, width=0.25)
    calibrate_gan_pair(generator, classifier)
    oracle = ResidualCNN(channels=1, width=0.25).eval()
    return classifier, oracle, generator


def test_disentanglement_samples_decode_one_z1_with_and_without_z2(networks):
    C, oracle, G = networks
    samples = figures.disentanglement_samples(C, oracle, G, COUNT, SEED)
    z1 = torch.randn(COUNT, NZ1, generator=torch.Generator().manual_seed(SEED))
    with torch.no_grad():
        assert torch.allclose(samples["negative"]["images"], G(z1, torch.zeros(COUNT, NZ2)))
    assert samples["positive"]["images"].shape == (COUNT, 1, SIZE, SIZE)
    assert not torch.allclose(samples["positive"]["images"], samples["negative"]["images"])


def test_disentanglement_samples_follow_the_seed_not_the_global_rng(networks):
    C, oracle, G = networks
    torch.manual_seed(1)
    first = figures.disentanglement_samples(C, oracle, G, COUNT, SEED)
    after_first = torch.rand(1)
    torch.manual_seed(2)
    again = figures.disentanglement_samples(C, oracle, G, COUNT, SEED)
    torch.manual_seed(1)
    assert torch.equal(torch.rand(1), after_first)  # the global RNG was not drawn from
    other = figures.disentanglement_samples(C, oracle, G, COUNT, SEED + 1)
    for row in ("negative", "positive"):
        assert torch.equal(first[row]["images"], again[row]["images"])
        assert torch.equal(first[row]["C"], again[row]["C"])
        assert not torch.equal(first[row]["images"], other[row]["images"])


def test_disentanglement_probabilities_come_from_c_and_from_the_oracle(networks):
    C, oracle, G = networks
    samples = figures.disentanglement_samples(C, oracle, G, COUNT, SEED)
    for row in samples.values():
        with torch.no_grad():
            by_c, by_oracle = positive_probability(C, row["images"]), positive_probability(oracle, row["images"])
        assert torch.allclose(row["C"], by_c) and torch.allclose(row["oracle"], by_oracle)
        assert not torch.allclose(by_c, by_oracle, atol=1e-3)  # the two networks tell apart


def test_the_disentanglement_figure_writes_both_verdicts_under_each_image(networks, tmp_path):
    C, oracle, G = networks
    samples = figures.disentanglement_samples(C, oracle, G, COUNT, SEED)
    fig = figures.disentanglement_grid(samples)
    bottom_left = fig.axes[COUNT]  # the random-z2 row, first z1
    p = samples["positive"]
    assert bottom_left.get_xlabel() == f"C {p['C'][0]:.2f} · oracle {p['oracle'][0]:.2f}"
    figures.save(fig, tmp_path / "disentanglement.png")
    assert (tmp_path / "disentanglement.png").stat().st_size > 0


@pytest.fixture
def examples():
    rng = torch.Generator().manual_seed(0)
    images = torch.rand(4, 1, 32, 32, generator=rng) * 2 - 1
    heatmaps = {method: torch.rand(4, 32, 32, generator=rng) for method in ("gradcam", "difference", "interpolation")}
    return images, heatmaps


def test_perturbed_examples_are_the_probability_drop_metrics_images(examples):
    images, heatmaps = examples
    C = RegionClassifier()
    cells = figures.perturbed_examples(C, images, heatmaps, FRACTION)
    assert list(cells) == ["original", "gradcam", "difference"]  # methods not drawn in the paper's figure are left out
    assert torch.equal(cells["original"][0], images)
    for method in ("gradcam", "difference"):
        perturbed, p_positive = cells[method]
        assert torch.equal(perturbed, metrics.perturb_top_k(images, heatmaps[method], FRACTION))
        assert not torch.equal(perturbed, images)
        drop = metrics.probability_drop(C, images, heatmaps[method], FRACTION)
        assert torch.allclose(cells["original"][1] - p_positive, drop)


def test_the_perturbation_figure_shows_each_examples_perturbed_image(examples, tmp_path):
    images, heatmaps = examples
    data = ImageSet(images, torch.ones(4, dtype=torch.long), torch.zeros(4, 32, 32, dtype=torch.bool),
                    torch.zeros(4, dtype=torch.bool), [f"image{i}" for i in range(4)], torch.arange(4))
    picked = [3, 1]
    fig = figures.perturbation_rows(RegionClassifier(), data, heatmaps, picked, FRACTION)
    columns = [images] + [metrics.perturb_top_k(images, heatmaps[m], FRACTION) for m in ("gradcam", "difference")]
    assert len(fig.axes) == len(picked) * len(columns)
    for row, i in enumerate(picked):
        for col, expected in enumerate(columns):
            shown = fig.axes[row * len(columns) + col].images[0].get_array()
            assert torch.allclose(torch.as_tensor(shown.data), torch.as_tensor(figures._grey(expected[i])))
    figures.save(fig, tmp_path / "perturbation.png")
    assert (tmp_path / "perturbation.png").stat().st_size > 0


def test_the_metrics_figure_gives_each_of_more_methods_than_the_palette_has_colours_its_own():
    import pandas as pd

    methods = [f"method_{i}" for i in range(12)]
    table = pd.DataFrame([{"method": method, "metric": metric, "mean": 0.5, "ci_low": 0.4, "ci_high": 0.6}
                          for metric in ("pointing_game", "mask_auroc") for method in methods])
    fig = figures.metrics_bars(table)
    bars = fig.axes[0].patches
    assert len({bar.get_facecolor() for bar in bars}) == len(methods)


def test_the_metrics_figure_draws_an_interval_that_misses_its_mean_where_the_table_puts_it(tmp_path):
    import pandas as pd

    # few bootstrap resamples can give an interval that lies wholly on one side of the mean
    table = pd.DataFrame([{"method": "ig", "metric": "pointing_game", "mean": 0.5, "ci_low": 0.55, "ci_high": 0.7},
                          {"method": "gradcam", "metric": "pointing_game", "mean": 0.3, "ci_low": 0.1, "ci_high": 0.2}])
    fig = figures.metrics_bars(table)
    (lines,) = fig.axes[0].collections[:1]
    assert [tuple(segment[:, 1]) for segment in lines.get_segments()] == [(0.55, 0.7), (0.1, 0.2)]
    figures.save(fig, tmp_path / "metrics.png")
    assert (tmp_path / "metrics.png").stat().st_size > 0
