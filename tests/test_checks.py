import copy

import pytest
import torch
from torch import nn

from safetensors.torch import save_file
from torchvision.models import inception_v3

from medxgan.evaluate.checks import INCEPTION_SIZE, cascading_randomisation, frechet_distance, inception_features, load_inception, parameterised_layers, penultimate_features, proximity, sanity_check
from medxgan.config import ConfigError
from medxgan.data.manifest import ImageSet
from medxgan.evaluate.scoring import counterfactual_table
from medxgan.explainers import IntegratedGradients
from medxgan.nets.networks import Generator, SimpleCNN
from helpers import calibrate_batch_norm, inversion_record

NZ1, NZ2, SIZE, N_IMAGES = 8, 4, 64, 5
# SimpleCNN's parameterised layers, output first: the order of the cascade.
CASCADE = ["head", "features.12", "features.10", "features.7", "features.5", "features.2", "features.0"]
# IG (4 steps) with every layer randomised: mean Spearman correlation 0.47-0.56 over 5 seeds (model and
# randomisation), 0.51 here. It stays well above 0 because IG's attributions carry the input's own structure.
IG_RANDOMISED_CORRELATION_BOUND = 0.9


@pytest.fixture(scope="module")
def calibrated():
    torch.manual_seed(0)
    generator, classifier = Generator(NZ1, NZ2, SIZE, 1, 0.0625), SimpleCNN(SIZE, 1, 0.25)
    z1, z2 = torch.randn(32, NZ1), torch.randn(32, NZ2)
    z2[:16] = 0  # half negatives, as in training
    calibrate_batch_norm(generator, z1, z2)
    with torch.no_grad():
        images = generator(z1, z2)
    calibrate_batch_norm(classifier, images)
    return classifier, images[16:16 + N_IMAGES]


@pytest.fixture
def classifier(calibrated):
    return copy.deepcopy(calibrated[0])  # tests may change modes and hooks


@pytest.fixture
def images(calibrated):
    return calibrated[1]


def layer_state(model: nn.Module, name: str) -> dict[str, torch.Tensor]:
    return model.get_submodule(name).state_dict()


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cascade_runs_from_the_head_down_one_step_per_parameterised_layer(classifier):
    assert list(reversed(parameterised_layers(classifier))) == CASCADE
    names = [name for name, _ in cascading_randomisation(classifier)]
    assert names == CASCADE


def test_step_k_randomises_exactly_the_top_k_layers(classifier):
    for step, (_, model) in enumerate(cascading_randomisation(classifier), start=1):
        assert not model.training and model is not classifier
        changed = [not same_state(layer_state(model, name), layer_state(classifier, name)) for name in CASCADE]
        assert changed == [i < step for i in range(len(CASCADE))]


def test_cascade_leaves_the_original_untouched(classifier):
    before = copy.deepcopy(classifier.state_dict())
    classifier.train()
    list(cascading_randomisation(classifier))
    assert same_state(classifier.state_dict(), before)
    assert classifier.training


def test_cascade_is_deterministic_by_seed_and_keeps_the_global_random_stream(classifier):
    def states(seed):
        return [model.state_dict() for _, model in cascading_randomisation(classifier, seed=seed)]

    torch.manual_seed(123)
    expected_draw = torch.rand(1)
    torch.manual_seed(123)
    first, second, other = states(0), states(0), states(1)
    assert torch.equal(torch.rand(1), expected_draw)
    assert all(same_state(a, b) for a, b in zip(first, second))
    assert not same_state(first[0], other[0])


def test_model_independent_heatmap_fails_the_sanity_check(classifier, images):
    result = sanity_check(lambda model: images.abs().mean(dim=1), classifier)
    assert len(result) == len(CASCADE) * N_IMAGES
    assert list(result.columns) == ["layer", "step", "image", "spearman", "ssim"]
    assert result.groupby("step")["layer"].first().tolist() == CASCADE
    assert result.spearman.to_numpy() == pytest.approx(1.0, abs=1e-6)  # float32 ranks
    assert result.ssim.to_numpy() == pytest.approx(1.0)


def test_integrated_gradients_passes_the_sanity_check(classifier, images):
    result = sanity_check(lambda model: IntegratedGradients(model, n_steps=4).attribute(images), classifier)
    fully_randomised = result[result.step == len(CASCADE)]
    assert fully_randomised.spearman.mean() < IG_RANDOMISED_CORRELATION_BOUND


def test_proximity_of_identical_images():
    images = torch.rand(3, 1, 32, 32) - 0.5
    scores = proximity(images, images.clone())
    assert torch.equal(scores["l1"], torch.zeros(3))
    assert scores["ssim"] == pytest.approx(torch.ones(3))


def test_proximity_l1_equals_a_uniform_shift():
    images = torch.rand(3, 1, 32, 32) - 0.5
    shift = 0.25
    scores = proximity(images + shift, images)
    assert scores["l1"] == pytest.approx(torch.full((3,), shift))
    assert (scores["ssim"] < 1).all()


def test_penultimate_features_are_the_head_input(classifier, images):
    classifier.train()
    features = penultimate_features(classifier, images, batch_size=2)
    classifier.eval()
    with torch.no_grad():
        expected = classifier.features(images).flatten(1)
    assert features.shape == (N_IMAGES, classifier.head.in_features)
    assert torch.allclose(features, expected, atol=1e-6)


def test_penultimate_features_leave_the_classifier_as_it_was(classifier, images):
    classifier.train()
    penultimate_features(classifier, images)
    with pytest.raises(RuntimeError):
        penultimate_features(classifier, images.expand(-1, 3, -1, -1))  # wrong channel count
    assert classifier.training and all(m.training for m in classifier.modules())
    assert all(p.requires_grad for p in classifier.parameters())
    assert not any(m._forward_hooks for m in classifier.modules())


def gaussian(n: int, mean: torch.Tensor, seed: int) -> torch.Tensor:
    return torch.randn(n, len(mean), generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + mean


def test_frechet_distance_of_a_set_with_itself_is_zero():
    features = gaussian(200, torch.zeros(4), seed=0)
    assert frechet_distance(features, features) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_of_shifted_gaussians_is_the_squared_mean_shift():
    n, shift = 2000, torch.tensor([1.0, -1.0, 0.5, 0.0])
    a, b = gaussian(n, torch.zeros(4), seed=0), gaussian(n, shift, seed=1)
    # Sampling noise of the mean term is about 2 |shift| sqrt(2 / n) = 0.1 here; 0.3 allows 3 of it.
    assert frechet_distance(a, b) == pytest.approx(shift.square().sum().item(), abs=0.3)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-9)


def test_frechet_distance_is_biased_upward_with_few_samples():
    def same_distribution(n):
        return frechet_distance(gaussian(n, torch.zeros(4), seed=0), gaussian(n, torch.zeros(4), seed=1))

    assert same_distribution(20) > same_distribution(2000) > 0


def test_frechet_distance_needs_matching_feature_sets():
    with pytest.raises(ValueError, match="feature sets"):
        frechet_distance(torch.zeros(5, 3), torch.zeros(5, 4))


def counterfactual_inputs(images: torch.Tensor):
    """Positives, negatives and inversion results built from a few images: the reconstructions are the
    positives with a little noise, the negative realisations their mirror images."""
    n = len(images)

    def image_set(x):
        return ImageSet(x, torch.ones(n, dtype=torch.long), torch.zeros(n, *x.shape[2:], dtype=torch.bool),
                        torch.zeros(n, dtype=torch.bool), [f"i{k}" for k in range(n)], torch.arange(n))

    noisy = images + 0.05 * torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
    p_negative = torch.linspace(0.1, 0.9, n)  # C's positive probability for each G(z1, 0)
    return image_set(images), image_set(images.flip(-1)), inversion_record(
        images, reconstruction=noisy, negative=images.flip(-1), p_negative=p_negative)


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    """An Inception v3 weights file in torchvision's layout (random values, batch norm calibrated on
    noise: no download here)."""
    torch.manual_seed(0)
    model = inception_v3(weights=None, aux_logits=True, init_weights=False)
    calibrate_batch_norm(model, torch.randn(4, 3, INCEPTION_SIZE, INCEPTION_SIZE))
    path = tmp_path_factory.mktemp("weights") / "inception.safetensors"
    save_file(model.state_dict(), str(path))
    return path, model


def test_inception_loads_the_saved_weights_and_gives_pool_features(inception_weights, images):
    path, original = inception_weights
    model = load_inception(path)
    assert torch.equal(model.Conv2d_1a_3x3.conv.weight, original.Conv2d_1a_3x3.conv.weight)
    features = inception_features(model, images[:2], batch_size=1)
    assert features.shape == (2, 2048) and torch.isfinite(features).all()
    assert torch.allclose(features, inception_features(model, images[:2], batch_size=2), atol=1e-5)
    spread = features.var(dim=0).sum().item()
    assert abs(frechet_distance(features, features)) < 1e-6 * spread


def test_inception_frechet_rows_appear_only_when_weights_are_configured(inception_weights, classifier, images):
    positives, negatives, latents = counterfactual_inputs(images[:2])  # Inception is slow on a CPU
    s = {"seed": 0, "checks": {"inception_weights": None}}
    plain = counterfactual_table(classifier, positives, negatives, latents, s)
    assert not plain.metric.str.contains("inception").any()
    assert plain.metric.str.startswith("frechet_distance_classifier_features:").sum() == 3
    # validity: of p_negative = [0.1, 0.9], one is called negative
    assert plain.set_index("metric").loc["validity", "mean"] == pytest.approx(0.5)
    with_inception = counterfactual_table(classifier, positives, negatives, latents,
                                          {**s, "checks": {"inception_weights": str(inception_weights[0])}})
    rows = with_inception.set_index("metric")["mean"].filter(like="frechet_distance_inception:")
    assert len(rows) == 3
    # the negative realisations are the real negatives here: distance 0; the noisy reconstructions are not
    assert rows["frechet_distance_inception:negative_realisations_vs_real_negatives"] == pytest.approx(0, abs=1e-6)
    assert rows["frechet_distance_inception:reconstructions_vs_real_positives"] > 1


def test_missing_inception_weights_name_the_key(classifier, images):
    positives, negatives, latents = counterfactual_inputs(images)
    with pytest.raises(ConfigError, match="checks.inception_weights: file not found: /nowhere.pth"):
        counterfactual_table(classifier, positives, negatives, latents,
                             {"seed": 0, "checks": {"inception_weights": "/nowhere.pth"}})
