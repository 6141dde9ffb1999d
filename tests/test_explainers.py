import copy

import captum.attr
import pytest
import torch
import torchvision
from torch import nn

from medxgan.explainers import EXPLAINERS, GENERATIVE_METHODS, BlurIntegratedGradients, CounterfactualIntegratedGradients, DifferenceMap, GenerativeExplainer, GradCAM, IntegratedGradients, Interpolation, LatentIG, LatentIGToImage, LatentShift, RealImageExplainer, build_explainer, cell_centres, place_cells, to_grey
from medxgan import names as methods
from medxgan.nets.networks import Generator, SimpleCNN, positive_probability
from helpers import RegionClassifier, calibrate_gan_pair

NZ1, NZ2, SIZE = 8, 4, 64
# Latent IG path form vs C(x_m) - C(x_0) with 64 steps: the largest error measured over 20 seeds
# x 8 images was 1.1e-3 (the endpoint form's was 5e-3 to 3.4e-2); the bound leaves a ~3x margin.
COMPLETENESS_STEPS, COMPLETENESS_TOL = 64, 3e-3
# Chunked against whole (other batch sizes): equal in exact arithmetic, but CPU kernels pick other
# algorithms for other batch sizes, and a rounding that moves a pre-activation across a ReLU's kink
# changes a gradient outright. In float32 Latent IG chunked and whole differed by 7.6e-9 on an
# Intel Xeon (AMX) and by up to 8.1e-5 on an AMD EPYC (Zen 4), where the same test also passed or
# failed with the tests run before it. The tests of chunking therefore run the networks in float64
# (`exact_models`), where rounding is 1e-16 and these bounds hold on any CPU while a chunk joined
# wrongly still moves the result by a whole path step (over 1e-4 here).
# (`python benchmarks/rounding.py` prints the float32 spread of the kernels on a new CPU.)
EXACT_RTOL, EXACT_ATOL = 1e-9, 1e-12


def latents(n: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, NZ1, generator=generator), torch.randn(n, NZ2, generator=generator)


@pytest.fixture(scope="module")
def calibrated_models():
    torch.manual_seed(0)
    generator, classifier = Generator(NZ1, NZ2, SIZE, channels=1, width=0.125), SimpleCNN(SIZE, 1, width=0.5)
    calibrate_gan_pair(generator, classifier)
    return classifier, generator


@pytest.fixture
def models(calibrated_models):
    return copy.deepcopy(calibrated_models)  # tests may change modes and flags


@pytest.fixture
def exact_models(calibrated_models):
    return tuple(copy.deepcopy(network).double() for network in calibrated_models)


@pytest.fixture
def exact_batch(exact_models):
    _, generator = exact_models
    z1, z2 = (z.double() for z in latents(5))
    with torch.no_grad():
        return generator(z1, z2), (z1, z2)


@pytest.fixture
def batch(models):
    _, generator = models
    z1, z2 = latents(5)
    with torch.no_grad():
        return generator(z1, z2), (z1, z2)


def build(name: str, classifier, generator, **kwargs):
    cls = EXPLAINERS[name]
    if name in GENERATIVE_METHODS:
        return cls(classifier, generator, **kwargs)
    return cls(classifier, **kwargs)


# few steps: these tests check plumbing
FAST = {"latent_ig": {"n_steps": 4}, "ig": {"n_steps": 8}, "ig_blur": {"n_steps": 8}, "ig_counterfactual": {"n_steps": 8},
        "ig_removal": {"n_steps": 8},
        "latent_ig_to_image": {"latent_steps": 4, "image_steps": 8}, "latent_shift": {"search_steps": 4, "frames": 3}}


def test_generative_methods_are_the_generative_explainers():
    assert set(GENERATIVE_METHODS) == {"difference", "interpolation", "latent_ig", "ig_counterfactual", "ig_removal",
                                       "latent_ig_to_image", "latent_shift"}
    assert all(issubclass(EXPLAINERS[name], GenerativeExplainer) for name in GENERATIVE_METHODS)


@pytest.mark.parametrize("name", EXPLAINERS)
def test_heatmaps_are_non_negative_finite_maps(name, models, batch):
    images, z = batch
    heatmaps = build(name, *models, **FAST.get(name, {})).attribute(images, target=1, latents=z)
    assert heatmaps.shape == (5, SIZE, SIZE)
    assert heatmaps.dtype == torch.float32 and heatmaps.device.type == "cpu"
    assert torch.isfinite(heatmaps).all() and (heatmaps >= 0).all()
    assert heatmaps.sum() > 0


@pytest.mark.parametrize("name", GENERATIVE_METHODS)
def test_generative_explainer_needs_latents_or_inverter(name, models, batch):
    images, _ = batch
    with pytest.raises(ValueError, match="latents"):
        build(name, *models).attribute(images)


def test_the_latents_error_says_what_to_give(models, batch):
    images, z = batch
    with pytest.raises(ValueError, match=r"^DifferenceMap needs latents=\(z1, z2\) from an inversion or an inverter "
                                         r"to compute them$"):
        DifferenceMap(*models).attribute(images)
    with pytest.raises(ValueError, match=r"^latents for 4/4 images given for 5 images$"):
        DifferenceMap(*models).attribute(images, latents=(z[0][:4], z[1][:4]))


def test_to_grey_names_a_channel_count_it_cannot_convert():
    with pytest.raises(ValueError, match=r"^grey conversion needs 1 or 3 channels, got 2$"):
        to_grey(torch.zeros(1, 2, 5, 5))


@pytest.mark.parametrize("name", GENERATIVE_METHODS)
def test_every_generative_explainer_takes_an_inverter(name, models, batch):
    images, z = batch
    explainer = build(name, *models, inverter=lambda x: z, **FAST.get(name, {}))
    assert torch.equal(explainer.attribute(images), explainer.attribute(images, latents=z))


def test_inverter_supplies_the_latents(models, batch):
    images, z = batch
    calls = []

    def inverter(x):
        calls.append(x)
        return z

    explainer = DifferenceMap(*models, inverter=inverter)
    assert torch.equal(explainer.attribute(images), explainer.attribute(images, latents=z))
    assert len(calls) == 1 and calls[0] is images


def test_latent_ig_path_form_is_complete_and_endpoint_form_is_not(models):
    classifier, generator = models
    z1, z2 = latents(4, seed=2)
    with torch.no_grad():
        delta = positive_probability(classifier, generator(z1, z2)) - positive_probability(
            classifier, generator(z1, torch.zeros_like(z2)))
    errors = {}
    for form in LatentIG.FORMS:
        explainer = LatentIG(classifier, generator, n_steps=COMPLETENESS_STEPS, form=form)
        errors[form] = (explainer.attributions(z1, z2).sum(dim=(1, 2, 3)) - delta).abs()
    assert errors["path"].max() < COMPLETENESS_TOL
    # Measured: the endpoint form's mean error was 12x to 73x the path form's over 20 seeds.
    assert errors["endpoint"].mean() > 3 * errors["path"].mean()


class LinearPathGenerator(nn.Module):
    """G(z1, z2) = z2[:, 0] * pattern: the path G(z1, a z2) is a straight line through 0."""

    def __init__(self, pattern: torch.Tensor):
        super().__init__()
        self.nz1, self.nz2 = 2, 2
        self.register_buffer("pattern", pattern)

    def forward(self, z1, z2):
        return z2[:, :1, None, None] * self.pattern


class LogisticClassifier(nn.Module):
    """Logits (0, w . x): C's positive probability is sigmoid(w . x)."""

    def __init__(self, weights: torch.Tensor):
        super().__init__()
        self.weights = nn.Parameter(weights)

    def forward(self, x):
        logit = (x * self.weights).flatten(1).sum(dim=1)
        return torch.stack([torch.zeros_like(logit), logit], dim=1)


def test_latent_ig_is_complete_relative_to_a_large_probability_change():
    # p(G(z1, a z2)) = sigmoid(SLOPE * s * a): steepest at a = 0, so a path that skips its first
    # step loses about SLOPE * s / 4 / n_steps, a few per cent of the change; the trapezoid rule's
    # own error here is about (1 / n_steps)^2 / 12 * |f'(1) - f'(0)|, under 1e-4 of it.
    slope, n_steps = 8.0, COMPLETENESS_STEPS
    pattern = torch.zeros(1, 1, 8, 8)
    pattern[..., 2:5, 3:6] = 1.0
    classifier = LogisticClassifier(pattern[0] * slope / pattern.sum())
    generator = LinearPathGenerator(pattern)
    scales = torch.tensor([1.0, 0.6, 1.3])
    z1, z2 = torch.zeros(3, 2), torch.stack([scales, torch.zeros(3)], dim=1)
    delta = torch.sigmoid(slope * scales) - 0.5
    attributions = LatentIG(classifier, generator, n_steps=n_steps).attributions(z1, z2)
    relative_error = (attributions.sum(dim=(1, 2, 3)) - delta).abs() / delta
    assert relative_error.max() < 5e-3


def test_latent_ig_forms_follow_their_formulas(exact_models):
    """x_i = G(z1, (i/m) z2) and g_i = grad of p(x_i), computed here step by step: the path form is
    sum_i (g_i + g_i+1) / 2 * (x_i+1 - x_i), the endpoint form mean_i g_i * (x_m - x_0)."""
    classifier, generator = exact_models
    classifier.eval(), generator.eval()
    z1, z2 = (z.double() for z in latents(2))
    m = 3
    xs, grads = [], []
    for i in range(m + 1):
        with torch.no_grad():
            x = generator(z1, (i / m) * z2)
        x.requires_grad_(True)
        grads.append(torch.autograd.grad(positive_probability(classifier, x).sum(), x)[0])
        xs.append(x.detach())
    expected = {"path": sum(0.5 * (grads[i] + grads[i + 1]) * (xs[i + 1] - xs[i]) for i in range(m)),
                "endpoint": sum(grads) / (m + 1) * (xs[m] - xs[0])}
    for form, attributions in expected.items():
        for batch_size in (3, 64):  # one path point per generator batch, or the whole path at once
            explainer = LatentIG(classifier, generator, n_steps=m, form=form, batch_size=batch_size)
            torch.testing.assert_close(explainer.attributions(z1, z2), attributions, rtol=EXACT_RTOL, atol=EXACT_ATOL)


def test_latent_ig_defaults_to_the_path_form_with_50_steps(models):
    z1, z2 = latents(2)
    torch.testing.assert_close(LatentIG(*models).attributions(z1, z2),
                               LatentIG(*models, n_steps=50, form="path").attributions(z1, z2), rtol=0, atol=0)


def test_latent_ig_keeps_the_given_target(models):
    # Two-class softmax: p0 = 1 - p1, so a fixed target 0 gives exactly the negated attributions.
    # Re-picking the argmax class at each step (the released bug) would break this.
    z1, z2 = latents(3)
    explainer = LatentIG(*models, n_steps=8)
    torch.testing.assert_close(explainer.attributions(z1, z2, target=0),
                               -explainer.attributions(z1, z2, target=1), rtol=1e-4, atol=1e-7)


def test_latent_ig_heatmaps_are_the_attributions_for_the_given_target(models, batch):
    images, (z1, z2) = batch
    explainer = LatentIG(*models, n_steps=4)
    for target in (0, 1):
        expected = explainer.attributions(z1, z2, target).abs().sum(dim=1)
        torch.testing.assert_close(explainer.attribute(images, target, latents=(z1, z2)), expected)


def test_difference_map_is_absolute_generated_difference(models, batch):
    classifier, generator = models
    images, (z1, z2) = batch
    explainer = DifferenceMap(classifier, generator)
    with torch.no_grad():
        expected = (generator(z1, z2) - generator(z1, torch.zeros_like(z2))).abs()[:, 0]
    torch.testing.assert_close(explainer.attribute(images, latents=(z1, z2)), expected, rtol=1e-4, atol=1e-5)
    assert torch.equal(explainer.attribute(images, latents=(z1, torch.zeros_like(z2))), torch.zeros(5, SIZE, SIZE))


def test_difference_map_weights_rgb_to_grey(models):
    classifier, _ = models
    torch.manual_seed(3)
    rgb_generator = Generator(NZ1, NZ2, SIZE, channels=3, width=0.125).eval()
    z1, z2 = latents(2)
    heatmaps = DifferenceMap(classifier, rgb_generator).attribute(torch.zeros(2, 3, SIZE, SIZE), latents=(z1, z2))
    with torch.no_grad():
        diff = (rgb_generator(z1, z2) - rgb_generator(z1, torch.zeros_like(z2))).abs()
    expected = 0.2989 * diff[:, 0] + 0.5870 * diff[:, 1] + 0.1140 * diff[:, 2]
    torch.testing.assert_close(heatmaps, expected, rtol=1e-4, atol=1e-5)


def test_interpolation_path_runs_from_negative_realisation_to_reconstruction(models, batch):
    classifier, generator = models
    images, (z1, z2) = batch
    path = Interpolation(classifier, generator).path(z1, z2)
    assert path.shape == (5, 11, 1, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(path[:, 0], generator(z1, torch.zeros_like(z2)), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(path[:, -1], generator(z1, z2), rtol=1e-4, atol=1e-5)


def test_two_point_interpolation_is_the_difference_map(models, batch):
    images, z = batch
    torch.testing.assert_close(Interpolation(*models, n_points=2).attribute(images, latents=z),
                               DifferenceMap(*models).attribute(images, latents=z))


def test_gradcam_depends_on_target(models, batch):
    classifier, _ = models
    images, _ = batch
    explainer = GradCAM(classifier)
    assert not torch.allclose(explainer.attribute(images, target=0), explainer.attribute(images, target=1))


class SpotDetector(nn.Module):
    """Positive logit = the sum of a 3 x 3 mean filter (no padding) max-pooled by 4: on 32 px, its
    7 x 7 map's cells look at pixels 2.5 + 4 s, from 2.5 to 26.5."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 1, 3), nn.MaxPool2d(4))
        self.head = nn.Linear(49, 2)
        with torch.no_grad():
            self.features[0].weight.fill_(1 / 9)
            self.features[0].bias.zero_()
            self.head.weight.copy_(torch.stack([torch.zeros(49), torch.ones(49)]))
            self.head.bias.zero_()

    @property
    def target_layer(self) -> nn.Module:
        return self.features[-1]

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def test_gradcam_puts_each_cell_where_it_looks():
    """A bright spot centred at (27, 27), which only the last cell sees (it looks at 26.5): the
    registered map peaks on the spot, where pytorch-grad-cam's map, stretched over the image, puts
    that cell at 29.4 and beyond, off the spot."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    classifier = SpotDetector().eval()
    images = torch.zeros(1, 1, 32, 32)
    images[..., 26:29, 26:29] = 1.0
    spot = torch.zeros(32, 32, dtype=torch.bool)
    spot[25:30, 25:30] = True
    registered = GradCAM(classifier).attribute(images)[0]
    assert spot.flatten()[registered.argmax()]
    with pytorch_grad_cam.GradCAM(model=classifier, target_layers=[classifier.target_layer]) as cam:
        stretched = torch.from_numpy(cam(input_tensor=images.clone().requires_grad_(True),
                                         targets=[ClassifierOutputTarget(1)]))[0]
    assert not spot.flatten()[stretched.argmax()]


def test_cell_centres_of_the_papers_brain_cnn_are_the_middle_of_the_image():
    """Its unpadded blocks put the 8 x 8 last block's cells at 17.5 + 4 s (by the layers' sizes);
    the gradient-measured centres agree within a pixel and a half."""
    classifier = SimpleCNN(64, 1, 0.5).eval()
    first, last = cell_centres(classifier, classifier.target_layer, torch.zeros(2, 1, 64, 64))
    torch.testing.assert_close(first, torch.tensor([17.5, 17.5]), atol=1.5, rtol=0)
    torch.testing.assert_close(last, torch.tensor([45.5, 45.5]), atol=1.5, rtol=0)


def test_cells_no_probe_moves_keep_the_stretched_place():
    """Dead activations (a bias far below zero before the ReLU) give no input gradient: the centres
    are the stretch's, not a division by zero, and the maps stay finite."""
    classifier = SpotDetector().eval()
    classifier.features.insert(1, nn.ReLU())
    with torch.no_grad():
        classifier.features[0].bias.fill_(-100.0)
    first, last = cell_centres(classifier, classifier.target_layer, torch.zeros(1, 1, 32, 32))
    torch.testing.assert_close(first, torch.tensor([(0.5) * 32 / 7 - 0.5] * 2))
    torch.testing.assert_close(last, torch.tensor([(6.5) * 32 / 7 - 0.5] * 2))
    assert GradCAM(classifier).attribute(torch.rand(2, 1, 32, 32)).isfinite().all()


def test_cells_placed_on_the_whole_image_are_a_corner_aligned_resize():
    maps = torch.rand(2, 4, 5)
    placed = place_cells(maps, torch.tensor([0.0, 0.0]), torch.tensor([15.0, 19.0]), (16, 20))
    expected = nn.functional.interpolate(maps[:, None], size=(16, 20), mode="bilinear", align_corners=True)[:, 0]
    torch.testing.assert_close(placed, expected)
    # beyond the first and the last centre, the edge cells' values
    inside = place_cells(maps, torch.tensor([4.0, 4.0]), torch.tensor([11.0, 15.0]), (16, 20))
    torch.testing.assert_close(inside[:, :4, 4], maps[:, :1, 0].expand(-1, 4))


def test_integrated_gradients_attributes_only_the_driving_region():
    images = torch.rand(3, 1, 32, 32) * 2 - 1
    heatmaps = IntegratedGradients(RegionClassifier(8, 24), n_steps=16).attribute(images)
    outside = torch.ones(32, 32, dtype=torch.bool)
    outside[8:24, 8:24] = False
    assert (heatmaps[:, outside] == 0).all()
    assert (heatmaps[:, ~outside] > 0).float().mean() > 0.9


def test_integrated_gradients_uses_its_step_count():
    # Captum's IG sums to p(x) - p(baseline) up to the quadrature's error, which shrinks with the
    # number of steps: 2 steps must be visibly worse than 64 on a sigmoid of the region's mean.
    images = torch.ones(2, 1, 32, 32)
    classifier = RegionClassifier(8, 24, gain=6.0)
    delta = positive_probability(classifier, images) - positive_probability(classifier, -images)
    errors = {}
    for steps in (2, 64):
        explainer = IntegratedGradients(classifier, n_steps=steps)
        signed = explainer._per_chunk(lambda chunk: explainer._explain(chunk, 1), images)
        errors[steps] = (signed.sum(dim=(1, 2, 3)) - delta.detach()).abs().max()
    assert errors[64] < errors[2] / 10


def test_integrated_gradients_defaults_are_captums_from_black(models, batch):
    classifier, _ = models
    images, _ = batch
    expected = captum.attr.IntegratedGradients(lambda x: classifier(x).softmax(dim=1)).attribute(
        images, baselines=-1.0, target=1)  # captum's default: 50 steps
    torch.testing.assert_close(IntegratedGradients(classifier).attribute(images), expected.abs().sum(dim=1))


def test_integrated_gradients_is_zero_at_its_baseline(models):
    classifier, _ = models
    black = torch.full((2, 1, SIZE, SIZE), -1.0)
    assert torch.equal(IntegratedGradients(classifier, n_steps=8).attribute(black), torch.zeros(2, SIZE, SIZE))


def _hook_count(module: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in module.modules())


@pytest.mark.parametrize("name", EXPLAINERS)
@pytest.mark.parametrize("training", [False, True])
def test_explainers_leave_models_as_they_were(name, training, models, batch):
    classifier, generator = models
    images, z = batch
    classifier.train(training), generator.train(training)
    generator.project.requires_grad_(False)  # a mix of frozen and trainable weights
    flags = [p.requires_grad for p in [*classifier.parameters(), *generator.parameters()]]
    build(name, classifier, generator, **FAST.get(name, {})).attribute(images, latents=z)
    assert all(m.training == training for m in [*classifier.modules(), *generator.modules()])
    assert [p.requires_grad for p in [*classifier.parameters(), *generator.parameters()]] == flags
    assert all(p.grad is None for p in [*classifier.parameters(), *generator.parameters()])
    assert _hook_count(classifier) == _hook_count(generator) == 0


@pytest.mark.parametrize("name", EXPLAINERS)
def test_chunking_does_not_change_results(name, exact_models, exact_batch):
    images, z = exact_batch
    kwargs = FAST.get(name, {})
    whole = build(name, *exact_models, **kwargs).attribute(images, latents=z)
    chunked = build(name, *exact_models, batch_size=2, **kwargs).attribute(images, latents=z)
    # heatmaps are float32: the float64 results may round to neighbouring float32 values
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", [name for name in EXPLAINERS if name != "gradcam"])  # pytorch-grad-cam goes through numpy, which has no bf16
def test_explainers_follow_bfloat16_networks(name, models, batch):
    # the explainers' own tensors (path fractions, shift grids) must take the latents' dtype: a float32
    # one promotes the codes, which bf16 layers then refuse
    images, (z1, z2) = batch
    networks = [copy.deepcopy(network).bfloat16() for network in models]
    heatmaps = build(name, *networks, **FAST.get(name, {})).attribute(images.bfloat16(),
                                                                      latents=(z1.bfloat16(), z2.bfloat16()))
    assert heatmaps.shape == (5, SIZE, SIZE) and heatmaps.dtype == torch.float32 and torch.isfinite(heatmaps).all()


@pytest.mark.parametrize("form", LatentIG.FORMS)
def test_latent_ig_chunks_along_the_path(form, exact_models):
    # batch_size 3 with 2 images: stretches of one path point each, joined across chunks.
    z1, z2 = (z.double() for z in latents(2))
    whole = LatentIG(*exact_models, n_steps=4, form=form).attributions(z1, z2)
    chunked = LatentIG(*exact_models, n_steps=4, form=form, batch_size=3).attributions(z1, z2)
    torch.testing.assert_close(chunked, whole, rtol=EXACT_RTOL, atol=EXACT_ATOL)


def test_latent_ig_rejects_unknown_form(models):
    with pytest.raises(ValueError, match="form"):
        LatentIG(*models, form="midpoint")


EXPLAIN_CFG = {"batch_size": 7, "interpolation_points": 5, "latent_ig_steps": 9, "latent_ig_form": "endpoint",
               "ig_steps": 11, "ig_baseline": 0.5, "ig_blur_kernel": 7, "ig_blur_sigma": 2.5, "latent_shift_max": 3.0,
               "latent_shift_search_steps": 6, "latent_shift_drop": 0.4, "latent_shift_frames": 4}


@pytest.mark.parametrize("method, options", [
    ("difference", {}), ("gradcam", {}),
    ("interpolation", {"n_points": 5}),
    ("latent_ig", {"n_steps": 9, "form": "endpoint"}),
    ("ig", {"n_steps": 11, "baseline": 0.5}),
    ("ig_blur", {"n_steps": 11, "kernel_size": 7, "sigma": 2.5}),
    ("ig_counterfactual", {"n_steps": 11}),
    ("ig_removal", {"n_steps": 11}),
    ("latent_ig_to_image", {"latent_steps": 9, "image_steps": 11}),
    ("latent_shift", {"max_shift": 3.0, "search_steps": 6, "drop": 0.4, "frames": 4}),
])
def test_build_explainer_passes_the_explain_settings(models, method, options):
    classifier, generator = models
    explainer = build_explainer(method, classifier, generator, EXPLAIN_CFG)
    assert type(explainer) is EXPLAINERS[method] and explainer.batch_size == 7
    assert explainer.classifier is classifier
    assert getattr(explainer, "generator", generator) is generator
    assert {name: getattr(explainer, name) for name in options} == options


@pytest.mark.parametrize("name, defaults", [
    ("ig_blur", {"n_steps": 50, "kernel_size": 11, "sigma": 5.0}),
    ("ig_counterfactual", {"n_steps": 50}),
    ("ig_removal", {"n_steps": 50}),
    ("latent_ig_to_image", {"latent_steps": 50, "image_steps": 50}),
])
def test_ig_explainers_default_to_50_steps_and_an_11_pixel_sigma_5_blur(name, defaults, models, batch):
    images, (z1, z2) = batch
    # off the reconstruction, so Latent IG to image's image leg is not empty
    x = images[:2] + 0.3 * torch.randn(images[:2].shape, generator=torch.Generator().manual_seed(0))
    z = z1[:2], z2[:2]
    assert torch.equal(build(name, *models).attribute(x, latents=z),
                       build(name, *models, **defaults).attribute(x, latents=z))


def test_latent_shift_defaults_search_8_in_16_steps_for_a_drop_of_0_8_and_map_10_frames():
    # p = sigmoid(2 (2 - s)) along the shift s: a drop of 0.8 first at s = 2.75, so the grid's step,
    # the drop and the number of frames (the map is |pattern| * shift / (frames - 1)) all show.
    pattern = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    pattern[..., 2:5, 3:6] = 1.0
    classifier = LogisticClassifier(pattern[0] * 2.0 / pattern.sum()).double()
    generator = LinearPathGenerator(pattern)
    z = torch.zeros(1, 2, dtype=torch.float64), torch.tensor([[2.0, 0.0]], dtype=torch.float64)
    heatmap = LatentShift(classifier, generator).attribute(torch.zeros(1, 1, 8, 8), latents=z)
    torch.testing.assert_close(heatmap[0], (pattern[0, 0] * 3.0 / 9).float())  # shift 3.0: the grid point after 2.75


def test_build_explainer_names_an_unknown_method(models):
    with pytest.raises(ValueError, match=r"unknown explanation method 'lime'; known: difference, interpolation"):
        build_explainer("lime", *models, EXPLAIN_CFG)


# --- explanations of the real image and the peers at their strongest ---------------------------


def test_ig_blur_starts_from_the_blurred_image(exact_models, exact_batch):
    classifier, _ = exact_models
    images, _ = exact_batch
    explainer = BlurIntegratedGradients(classifier, n_steps=8, kernel_size=7, sigma=2.5)
    blurred = torchvision.transforms.functional.gaussian_blur(images, [7, 7], [2.5, 2.5])
    expected = captum.attr.IntegratedGradients(lambda x: classifier(x).softmax(dim=1)).attribute(
        images, baselines=blurred, target=1, n_steps=8)
    torch.testing.assert_close(explainer.attribute(images), expected.abs().sum(dim=1).float())
    flat = blurred.mean(dim=(2, 3), keepdim=True).expand_as(images)  # its own blur, up to rounding
    torch.testing.assert_close(explainer.attribute(flat), torch.zeros(5, SIZE, SIZE), rtol=0, atol=1e-12)


def test_counterfactual_ig_runs_from_the_negative_realisation_to_the_image(exact_models, exact_batch):
    classifier, generator = exact_models
    images, (z1, z2) = exact_batch
    x = images + 0.3 * torch.randn(images.shape, generator=torch.Generator().manual_seed(0), dtype=images.dtype)
    with torch.no_grad():
        negative = generator(z1, torch.zeros_like(z2))
        delta = positive_probability(classifier, x) - positive_probability(classifier, negative)
    attributions = CounterfactualIntegratedGradients(classifier, generator, n_steps=64).attributions(x, z1, z2)
    # complete: IG sums to the change of C along its path, here up to the quadrature's error
    torch.testing.assert_close(attributions.sum(dim=(1, 2, 3)), delta, rtol=0, atol=2e-3)
    at_baseline = CounterfactualIntegratedGradients(classifier, generator, n_steps=8).attribute(negative, latents=(z1, z2))
    assert torch.equal(at_baseline, torch.zeros(5, SIZE, SIZE))


def test_counterfactual_ig_takes_a_generator_of_another_precision(models, batch):
    # The negative realisation is the baseline of IG on the images: it takes the images' dtype, so a
    # float64 generator serves a float32 classifier.
    classifier, generator = models
    images, (z1, z2) = batch
    expected = CounterfactualIntegratedGradients(classifier, generator, n_steps=8).attribute(images, latents=(z1, z2))
    wide = CounterfactualIntegratedGradients(classifier, copy.deepcopy(generator).double(), n_steps=8)
    torch.testing.assert_close(wide.attribute(images, latents=(z1.double(), z2.double())), expected,
                               rtol=1e-4, atol=1e-6)


class SquareMaskGenerator(nn.Module):
    """A masked G in miniature: G(z1, 0) = z1[:, 0] * anatomy, and z2 acts only inside a square,
    where G(z1, z2) is z2[:, 0] * lesion; `compose` gives the image and that mask."""

    def __init__(self, anatomy: torch.Tensor, lesion: torch.Tensor, square: tuple[slice, slice]):
        super().__init__()
        self.nz1, self.nz2 = 2, 2
        mask = torch.zeros_like(anatomy)
        mask[..., square[0], square[1]] = 1.0
        for name, tensor in (("anatomy", anatomy), ("lesion", lesion), ("mask", mask)):
            self.register_buffer(name, tensor)

    def compose(self, z1, z2):
        mask = self.mask * (z2.norm(dim=1) > 0).to(z2.dtype)[:, None, None, None]
        image = (1 - mask) * z1[:, :1, None, None] * self.anatomy + mask * z2[:, :1, None, None] * self.lesion
        return image, mask

    def forward(self, z1, z2):
        return self.compose(z1, z2)[0]


def test_ig_removal_starts_from_the_image_with_the_masked_region_drawn_without_pathology():
    torch.manual_seed(0)
    anatomy, lesion = torch.rand(1, 1, 8, 8, dtype=torch.float64), torch.rand(1, 1, 8, 8, dtype=torch.float64)
    square = (slice(2, 5), slice(3, 6))
    generator = SquareMaskGenerator(anatomy, lesion, square)
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    z1, z2 = torch.tensor([[1.0, 0.0], [0.5, 0.0], [2.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.3, 0.2], [2.0, 1.0]])
    z1, z2 = z1.double(), z2.double()
    explainer = build("ig_removal", classifier, generator, n_steps=64)
    attributions = explainer.attributions(x, z1, z2)
    baseline = x.clone()
    baseline[..., square[0], square[1]] = (z1[:, :1, None, None] * anatomy)[..., square[0], square[1]]
    expected = captum.attr.IntegratedGradients(lambda images: classifier(images).softmax(dim=1)).attribute(
        x, baselines=baseline, target=1, n_steps=64)
    torch.testing.assert_close(attributions, expected)
    outside = torch.ones(8, 8, dtype=torch.bool)
    outside[square] = False
    assert torch.equal(attributions[..., outside], torch.zeros_like(attributions[..., outside]))
    with torch.no_grad():  # complete: the attributions sum to C(x) - C(baseline)
        delta = positive_probability(classifier, x) - positive_probability(classifier, baseline)
    torch.testing.assert_close(attributions.sum(dim=(1, 2, 3)), delta, rtol=0, atol=1e-3)


def test_ig_removal_of_a_plain_generator_is_ig_from_g_z1_0(models, batch):
    images, z = batch
    x = images + 0.3 * torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
    assert torch.equal(build("ig_removal", *models, n_steps=8).attribute(x, latents=z),
                       build("ig_counterfactual", *models, n_steps=8).attribute(x, latents=z))


@pytest.mark.parametrize("name", [name for name, cls in EXPLAINERS.items() if issubclass(cls, RealImageExplainer)])
def test_real_image_heatmaps_are_the_attributions_for_the_given_target(name):
    # Three classes, since with two the attributions for either target differ only in sign.
    torch.manual_seed(0)
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    generator = LinearPathGenerator(torch.rand(1, 1, 8, 8))
    z1, z2 = torch.zeros(2, 2), torch.tensor([[1.0, 0.0], [-0.5, 0.0]])
    x = torch.rand(2, 1, 8, 8)
    explainer = build(name, classifier, generator, **FAST[name])
    heatmaps = [explainer.attribute(x, target, latents=(z1, z2)) for target in range(3)]
    for target, heatmap in enumerate(heatmaps):
        torch.testing.assert_close(heatmap, explainer.attributions(x, z1, z2, target).abs().sum(dim=1))
    assert not torch.allclose(heatmaps[0], heatmaps[1]) and not torch.allclose(heatmaps[1], heatmaps[2])


def test_latent_ig_to_image_sums_to_the_change_from_the_negative_realisation_to_the_image():
    # G(z1, a z2) = a s pattern and C = sigmoid(w . x); x adds a bump outside the pattern, so both
    # legs move C by a tenth or more: from G(z1, 0) to G(z1, z2), then on to x.
    slope, n = 4.0, COMPLETENESS_STEPS
    pattern, bump = torch.zeros(2, 1, 1, 8, 8, dtype=torch.float64)
    pattern[..., 2:5, 3:6], bump[..., 5:7, 0:2] = 1.0, 1.0
    weights = (pattern + bump)[0] * slope / pattern.sum()
    classifier, generator = LogisticClassifier(weights).double(), LinearPathGenerator(pattern)
    z1, z2 = torch.zeros(3, 2, dtype=torch.float64), torch.tensor([[0.5, 0.0], [0.3, 0.0], [-0.4, 0.0]], dtype=torch.float64)
    reconstruction = generator(z1, z2)
    x = reconstruction + torch.tensor([-1.0, 1.0, 1.5], dtype=torch.float64).view(3, 1, 1, 1) * bump
    p_image, p_reconstruction, p_negative = (positive_probability(classifier, y).detach() for y in (
        x, reconstruction, generator(z1, torch.zeros_like(z2))))
    assert (p_image - p_reconstruction).abs().min() > 0.1 and (p_reconstruction - p_negative).abs().min() > 0.1
    explainer = LatentIGToImage(classifier, generator, latent_steps=n, image_steps=n)
    attributions = explainer.attributions(x, z1, z2)
    torch.testing.assert_close(attributions.sum(dim=(1, 2, 3)), p_image - p_negative, rtol=0, atol=COMPLETENESS_TOL)
    # with x = G(z1, z2) the image leg is empty: Latent IG's own attributions remain
    torch.testing.assert_close(explainer.attributions(reconstruction, z1, z2),
                               LatentIG(classifier, generator, n_steps=n).attributions(z1, z2),
                               rtol=EXACT_RTOL, atol=EXACT_ATOL)


def test_latent_shift_stops_at_the_first_shift_that_drops_c_enough_and_maps_the_change():
    # G(z1, z2) = z2[0] * pattern, C = sigmoid(w . x) rising with z2[0]: the descent is -e_z2[0], so
    # a shift s gives p = sigmoid(slope * (scale - s)); the first grid shift with p <= p0 - drop is
    # known in closed form, and the map is |pattern| * s / (frames - 1) per frame, averaged.
    slope, scale, drop, max_shift, steps, frames = 4.0, 1.0, 0.5, 4.0, 8, 5
    pattern = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    pattern[..., 2:5, 3:6] = 1.0
    classifier = LogisticClassifier(pattern[0] * slope / pattern.sum()).double()
    explainer = LatentShift(classifier, LinearPathGenerator(pattern), max_shift=max_shift, search_steps=steps,
                            drop=drop, frames=frames)
    z1, z2 = torch.zeros(1, 2, dtype=torch.float64), torch.tensor([[scale, 0.0]], dtype=torch.float64)
    grid = torch.linspace(0, max_shift, steps + 1, dtype=torch.float64)
    p = torch.sigmoid(slope * (scale - grid))
    expected_shift = grid[(p <= p[0] - drop).nonzero()[0, 0]]
    assert 0 < expected_shift < max_shift
    heatmap = explainer.attribute(torch.zeros(1, 1, 8, 8), latents=(z1, z2))
    torch.testing.assert_close(heatmap[0], (pattern[0, 0] * expected_shift / (frames - 1)).float())


def test_latent_shift_searches_each_images_shift_on_its_own():
    # p = sigmoid(4 (scale - s)) on the grid 0, 0.25, ..., 2: scale 0.5 drops by 0.5 first at 0.75,
    # scale 1 at 1.25, and scale 3.5 never (p > 0.99 throughout), so it takes the lowest p, at 2.
    pattern = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    pattern[..., 2:5, 3:6] = 1.0
    classifier = LogisticClassifier(pattern[0] * 4.0 / pattern.sum()).double()
    explainer = LatentShift(classifier, LinearPathGenerator(pattern), max_shift=2.0, search_steps=8, drop=0.5,
                            frames=3)
    z1, z2 = torch.zeros(3, 2, dtype=torch.float64), torch.tensor([[0.5, 0.0], [1.0, 0.0], [3.5, 0.0]],
                                                                   dtype=torch.float64)
    heatmaps = explainer.attribute(torch.zeros(3, 1, 8, 8), latents=(z1, z2))
    shifts = torch.tensor([0.75, 1.25, 2.0], dtype=torch.float64)
    torch.testing.assert_close(heatmaps, (pattern[:, 0] * shifts[:, None, None] / 2).float())


def test_latent_shift_takes_the_lowest_probability_when_no_shift_drops_c_enough():
    pattern = torch.ones(1, 1, 4, 4, dtype=torch.float64)
    classifier = LogisticClassifier(pattern[0] * 0.01).double()  # nearly flat: no shift drops p by 0.8
    explainer = LatentShift(classifier, LinearPathGenerator(pattern), max_shift=2.0, search_steps=4, frames=3)
    z1, z2 = torch.zeros(1, 2, dtype=torch.float64), torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    heatmap = explainer.attribute(torch.zeros(1, 1, 4, 4), latents=(z1, z2))
    torch.testing.assert_close(heatmap[0], torch.full((4, 4), 2.0 / 2))  # the whole range: 2.0 over 2 steps


class ShiftClassifier(nn.Module):
    """For G = z2[0] * pattern and Latent Shift from z2[0] = 1: logits as functions of the shift
    s = 1 - x[..., 0, 0]: class 0 at 0, the target (1) at s (s - 1), and `rising` more classes at
    4096 (s - 1). At s = 0 the target's probability is exactly 1/2 (the others' exp underflows to 0),
    and it falls with s; at s = 1 every logit is 0, so it is exactly 1 / (2 + rising); beyond, near 0."""

    def __init__(self, rising: int):
        super().__init__()
        self.rising = rising

    def forward(self, x):
        s = 1.0 - x[:, :1, 0, 0]
        return torch.cat([torch.zeros_like(s), s * (s - 1.0), (4096.0 * (s - 1.0)).expand(-1, self.rising)], dim=1)


@pytest.mark.parametrize("rising, drop, shift", [(2, 0.25, 1.0), (18, 0.8, 1.25)])
def test_latent_shift_stops_at_a_drop_of_exactly_drop_but_only_below_the_floor(rising, drop, shift):
    # On the grid 0, 0.25, ..., 2 the probability at s = 1 is exactly 1/4, a drop of exactly 0.25 from
    # 1/2, which stops the search; or exactly 1/20, the floor 0.05, which does not: only the next step does.
    pattern = torch.ones(1, 1, 4, 4, dtype=torch.float64)
    explainer = LatentShift(ShiftClassifier(rising), LinearPathGenerator(pattern), max_shift=2.0, search_steps=8,
                            drop=drop, frames=3)
    z1, z2 = torch.zeros(1, 2, dtype=torch.float64), torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    heatmap = explainer.attribute(torch.zeros(1, 1, 4, 4), latents=(z1, z2))
    torch.testing.assert_close(heatmap[0], torch.full((4, 4), shift / 2))


def test_the_method_families_name_every_explainer_once():
    families = methods.USES_G + methods.PIXEL_SPACE
    assert sorted(families) == sorted(EXPLAINERS) and len(set(families)) == len(families)
    assert set(methods.USES_G) == set(GENERATIVE_METHODS)
    assert set(methods.REAL_IMAGE_MAPS) == {name for name, cls in EXPLAINERS.items()
                                            if issubclass(cls, RealImageExplainer)}
