import copy
import dataclasses
import math

import pytest
import torch
from torch import nn

import medxgan.inversion as inversion
from medxgan.inversion import (POSITIVE_SEARCH_START, Inversion, InversionRecord, check_encoder, invert, invert_batch,
                               invert_batches, inversion_loss, negative_counterfactuals, positive_realisation,
                               reconstruct, reconstruction_mse, reconstruction_ssim, starting_codes, worst_patch_error)
from medxgan.nets.encoder import Encoder
from medxgan.nets.networks import Generator, SimpleCNN, positive_probability
from helpers import TUNING_OFF, calibrate_gan_pair

NZ1, NZ2, SIZE = 8, 4, 64
CFG = {"init": "random", "restarts": 2, "steps": 60, "lr": 0.05, "mse_weight": 10.0, "local_weight": 0.0,
       "local_patches": [4, 8], "bce_weight": 1.0, "batch_size": 4, "tuning": TUNING_OFF}
ROWS = torch.tensor([10, 3, 7, 0])  # manifest rows, deliberately not 0..N-1
# Batch invariance is exact in exact arithmetic (each image's loss is its own), but CPU kernels pick
# other algorithms for other batch sizes, and 60 Adam steps amplify their rounding: in float32 an
# image inverted alone and inside a batch of 4 differed by 2.4e-7 on an Intel Xeon (AMX) and by
# 4.9e-3 on an AMD EPYC (Zen 4). These tests therefore run G and C in float64, where the same
# amplification of a 1e-16 rounding stays below 1e-11 on any CPU: the bound below is far from
# rounding and far from any real coupling between images, which moves the codes by O(0.1).
# (`python benchmarks/rounding.py` prints the float32 spread of the kernels on a new CPU.)
BATCH_TOL = 1e-9


def latents(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, NZ1, generator=generator), torch.randn(n, NZ2, generator=generator)


@pytest.fixture(scope="module")
def calibrated_models():
    torch.manual_seed(0)
    generator, classifier = Generator(NZ1, NZ2, SIZE, channels=1, width=0.0625), SimpleCNN(SIZE, 1, width=0.25)
    calibrate_gan_pair(generator, classifier)
    return generator, classifier


@pytest.fixture
def models(calibrated_models):
    return copy.deepcopy(calibrated_models)


@pytest.fixture(scope="module")
def exact_models(calibrated_models):
    """The calibrated pair in float64, for the batch-invariance tests."""
    return tuple(copy.deepcopy(network).double() for network in calibrated_models)


@pytest.fixture(scope="module")
def exact_targets(targets):
    return targets.double()


@pytest.fixture(scope="module")
def exact_inverted(exact_models, exact_targets):
    generator, classifier = copy.deepcopy(exact_models)
    return invert(generator, classifier, exact_targets, ROWS, CFG, seed=1)


@pytest.fixture(scope="module")
def targets(calibrated_models):
    """Images G can reproduce exactly: G at known random codes."""
    generator, _ = calibrated_models
    z1, z2 = latents(len(ROWS), seed=5)
    with torch.no_grad():
        return generator(z1, z2)


@pytest.fixture(scope="module")
def inverted(calibrated_models, targets):
    generator, classifier = copy.deepcopy(calibrated_models)
    return invert(generator, classifier, targets, ROWS, CFG, seed=1)


def assert_same(a: Inversion, b: Inversion) -> None:
    for name, tensor in a.as_tensors().items():
        assert torch.equal(tensor, b.as_tensors()[name]), name


def test_inversion_shapes(inverted):
    assert inverted.z1.shape == (4, NZ1) and inverted.z2.shape == (4, NZ2)
    assert inverted.loss.shape == inverted.p_image.shape == (4,)
    assert torch.isfinite(inverted.loss).all()


def test_inversion_lowers_the_loss(models, targets, inverted):
    generator, classifier = models
    z1, z2 = starting_codes(ROWS, CFG["restarts"], NZ1, NZ2, seed=1)
    with torch.no_grad():
        p_target = positive_probability(classifier, targets)
        start = inversion_loss(generator, classifier, z1, z2, targets.repeat_interleave(CFG["restarts"], 0),
                               p_target.repeat_interleave(CFG["restarts"], 0), CFG)
    # Each image keeps its best codes, and the starting codes are candidates.
    assert (inverted.loss <= start.view(-1, CFG["restarts"]).min(1).values).all()
    # Measured: the final mean loss is 0.26x the starting mean (its floor is the BCE term's entropy, ~0.66).
    assert inverted.loss.mean() < 0.5 * start.mean()


def test_reported_loss_and_probability_belong_to_the_returned_codes(models, targets, inverted):
    generator, classifier = models
    with torch.no_grad():
        p_image = positive_probability(classifier, targets)
        recomputed = inversion_loss(generator, classifier, inverted.z1, inverted.z2, targets, p_image, CFG)
    torch.testing.assert_close(inverted.p_image, p_image)
    torch.testing.assert_close(inverted.loss, recomputed, rtol=1e-5, atol=1e-6)


def test_a_batch_gives_each_image_its_result_alone(exact_models, exact_targets, exact_inverted):
    generator, classifier = copy.deepcopy(exact_models)
    alone = [invert(generator, classifier, exact_targets[i:i + 1], ROWS[i:i + 1], CFG, seed=1) for i in range(len(ROWS))]
    for name in ("z1", "z2", "loss", "p_image"):
        torch.testing.assert_close(torch.cat([getattr(a, name) for a in alone]), getattr(exact_inverted, name),
                                   rtol=0, atol=BATCH_TOL)


def test_batch_size_splits_do_not_change_results(exact_models, exact_targets, exact_inverted):
    generator, classifier = copy.deepcopy(exact_models)
    chunked = invert(generator, classifier, exact_targets, ROWS, {**CFG, "batch_size": 3}, seed=1)
    for name, tensor in exact_inverted.as_tensors().items():
        torch.testing.assert_close(chunked.as_tensors()[name], tensor, rtol=0, atol=BATCH_TOL)


def test_networks_in_float64_invert_float32_images_in_float64(exact_models, targets, exact_targets):
    generator, classifier = copy.deepcopy(exact_models)
    cfg = {**CFG, "steps": 3}
    assert targets.dtype == torch.float32
    in_float64 = invert(generator, classifier, exact_targets[:2], ROWS[:2], cfg, seed=1)
    assert_same(invert(generator, classifier, targets[:2], ROWS[:2], cfg, seed=1), in_float64)
    assert all(tensor.dtype == torch.float64 for tensor in in_float64.as_tensors().values())


def test_inversion_is_deterministic_and_seeded(models, targets, inverted):
    generator, classifier = models
    assert_same(invert(generator, classifier, targets, ROWS, CFG, seed=1), inverted)
    other = invert(generator, classifier, targets, ROWS, CFG, seed=2)
    assert not torch.allclose(other.z1, inverted.z1)
    assert not torch.allclose(other.z2, inverted.z2)


def test_starting_codes_depend_only_on_the_row():
    z1, z2 = starting_codes(torch.tensor([4, 9]), 3, NZ1, NZ2, seed=1)
    z1_alone, z2_alone = starting_codes(torch.tensor([9]), 3, NZ1, NZ2, seed=1)
    assert z1.shape == (6, NZ1) and z2.shape == (6, NZ2)
    assert torch.equal(z1[3:], z1_alone) and torch.equal(z2[3:], z2_alone)
    assert not torch.allclose(z1[:3], z1[3:])
    assert not torch.allclose(z1[0], z1[1])  # each restart starts elsewhere
    other_seed, _ = starting_codes(torch.tensor([9]), 3, NZ1, NZ2, seed=2)
    assert not torch.allclose(other_seed, z1_alone)


def test_the_best_restart_is_kept(exact_models, exact_targets, monkeypatch):
    # With restarts=3, restart 0 does not start from the codes restarts=1 draws (both z1 and z2
    # come out of one generator, so the draws shift). Instead, build the three restarts from three
    # single-restart seeds, and compare with inverting from each seed alone.
    generator, classifier = copy.deepcopy(exact_models)
    seeds = (2, 7, 6)  # chosen so that the best restart is 0, 1, 2 and 2 for the four images
    single = {**CFG, "restarts": 1, "steps": 30}
    alone = [invert(generator, classifier, exact_targets, ROWS, single, seed=s) for s in seeds]

    original = inversion.starting_codes

    def three_seeds(rows, restarts, nz1, nz2, seed):
        assert restarts == len(seeds)
        parts = [original(rows, 1, nz1, nz2, s) for s in seeds]  # each (N, nz)
        return tuple(torch.stack([p[i] for p in parts], dim=1).flatten(0, 1) for i in range(2))

    monkeypatch.setattr(inversion, "starting_codes", three_seeds)
    together = invert(generator, classifier, exact_targets, ROWS, {**single, "restarts": 3}, seed=0)

    losses = torch.stack([a.loss for a in alone], dim=1)  # (N, 3)
    best = losses.argmin(1)
    assert best.unique().numel() == 3, "the test needs images whose best restart differs"
    torch.testing.assert_close(together.loss, losses.min(1).values, rtol=0, atol=BATCH_TOL)
    for i, restart in enumerate(best.tolist()):
        torch.testing.assert_close(together.z1[i], alone[restart].z1[i], rtol=0, atol=BATCH_TOL)
        torch.testing.assert_close(together.z2[i], alone[restart].z2[i], rtol=0, atol=BATCH_TOL)


def test_permuting_images_and_rows_permutes_the_results(exact_models, exact_targets, exact_inverted):
    generator, classifier = copy.deepcopy(exact_models)
    order = torch.tensor([2, 0, 3, 1])
    permuted = invert(generator, classifier, exact_targets[order], ROWS[order], CFG, seed=1)
    for name, tensor in exact_inverted.as_tensors().items():
        torch.testing.assert_close(permuted.as_tensors()[name], tensor[order], rtol=0, atol=BATCH_TOL)


def test_the_row_not_the_position_seeds_an_image(models, targets, inverted):
    generator, classifier = models
    other_rows = invert(generator, classifier, targets, ROWS + 100, CFG, seed=1)
    assert not torch.allclose(other_rows.z1, inverted.z1)


def test_invert_batch_is_what_invert_runs_per_batch(models, targets, inverted):
    generator, classifier = models
    generator.eval().requires_grad_(False)
    classifier.eval().requires_grad_(False)
    direct = invert_batch(generator, classifier, targets, ROWS, CFG, seed=1)
    assert_same(direct, inverted)


def test_negative_inversion_holds_z2_at_zero(models, targets):
    generator, classifier = models
    codes = invert(generator, classifier, targets, ROWS, CFG, seed=1, negative=True)
    assert torch.equal(codes.z2, torch.zeros_like(codes.z2))
    free = invert(generator, classifier, targets, ROWS, CFG, seed=1)
    assert not torch.equal(free.z2, torch.zeros_like(free.z2))


def test_an_encoder_is_asked_for_exactly_when_the_init_needs_one():
    encoder = nn.Identity()
    check_encoder({"init": "encoder"}, encoder)
    check_encoder({"init": "random"}, None)
    with pytest.raises(ValueError) as missing:
        check_encoder({"init": "encoder"}, None)
    assert str(missing.value) == ("inversion.init is 'encoder', but an encoder was not given: train one with "
                                  "`medxgan train-encoder`, pass it with --encoder")
    with pytest.raises(ValueError) as extra:
        check_encoder({"init": "random"}, encoder)
    assert str(extra.value) == "inversion.init is 'random', but an encoder was given: drop it"


def test_inversion_results_rebuild_from_what_they_save(inverted):
    rebuilt = Inversion(**inverted.as_tensors())  # the names written to latents.safetensors are the fields
    for name in ("z1", "z2", "loss", "p_image"):
        assert torch.equal(getattr(rebuilt, name), getattr(inverted, name))


def test_invert_batches_searches_z2_unless_told_otherwise_and_leaves_the_networks_frozen(exact_models, exact_targets, exact_inverted):
    generator, classifier = copy.deepcopy(exact_models)
    parts = list(invert_batches(generator, classifier, exact_targets, ROWS, {**CFG, "batch_size": 3}, seed=1))
    assert [batch for batch, _ in parts] == [slice(0, 3), slice(3, 6)]
    torch.testing.assert_close(torch.cat([part.z2 for _, part in parts]), exact_inverted.z2, rtol=0, atol=BATCH_TOL)
    for network in (generator, classifier):
        assert all(not p.requires_grad and p.grad is None for p in network.parameters())


class ShiftGenerator(nn.Module):
    """G(z1, z2) = (z1_0 + z2_0 + z2_1) everywhere on 8 x 8, through a linear layer (which bf16
    autocast runs in bf16): the anatomy sets how far an image is from C's boundary, and every
    coordinate of z2 moves it the same way."""

    nz1 = nz2 = 2

    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(4, 64, bias=False)
        with torch.no_grad():
            self.layer.weight.copy_(torch.tensor([1.0, 0.0, 1.0, 1.0]).expand(64, 4))

    def forward(self, z1, z2):
        return self.layer(torch.cat([z1, z2], dim=1)).view(-1, 1, 8, 8)


class MeanClassifier(nn.Module):
    """Logits (0, 4 x mean pixel): positive where the image is bright."""

    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(64, 1, bias=False)
        with torch.no_grad():
            self.layer.weight.fill_(4 / 64)

    def forward(self, x):
        logit = self.layer(x.flatten(1))
        return torch.cat([torch.zeros_like(logit), logit], dim=1)


def test_the_positive_search_starts_near_zero_and_climbs_c_at_its_learning_rate():
    """Step 0 is a tiny seeded draw; Adam's first step moves every coordinate by the learning rate
    (its first update is lr * g / |g|), towards a higher probability of positive."""
    generator, classifier = ShiftGenerator(), MeanClassifier()
    z1 = torch.tensor([[-1.0, 0.0], [-0.5, 3.0], [0.7, 0.0], [-2.0, 1.0], [1.5, -1.0], [-0.2, 0.0]])
    start = torch.randn(6, generator.nz2, generator=torch.Generator().manual_seed(0)) * POSITIVE_SEARCH_START
    with torch.no_grad():
        p_start = positive_probability(classifier, generator(z1, start))
    negative = p_start < 0.5
    assert negative.tolist() == [True, True, False, True, False, True]
    unmoved, found = positive_realisation(generator, classifier, z1, {"positive_steps": 0, "positive_lr": 0.05}, seed=0)
    assert torch.equal(unmoved, start) and torch.equal(found, ~negative)
    moved, _ = positive_realisation(generator, classifier, z1, {"positive_steps": 1, "positive_lr": 0.05}, seed=0)
    torch.testing.assert_close((moved - start)[negative].abs(), torch.full_like(start[negative], 0.05),
                               rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        p_moved = positive_probability(classifier, generator(z1, moved))
    assert (p_moved[negative] > p_start[negative]).all()
    bf16, _ = positive_realisation(generator, classifier, z1, {"positive_steps": 1, "positive_lr": 0.05}, seed=0,
                                   precision="bf16")
    assert not torch.equal(bf16, moved)  # bf16 is another computation


def test_positive_realisation_keeps_the_first_z2_that_c_calls_positive(models):
    generator, classifier = models
    torch.manual_seed(3)
    z1 = torch.randn(6, generator.nz1)
    cfg = {"positive_steps": 40, "positive_lr": 0.1}
    z2, found = positive_realisation(generator, classifier, z1, cfg, seed=0)
    with torch.no_grad():
        p = positive_probability(classifier, generator(z1, z2))
    assert found.any() and torch.equal(found, p >= 0.5)  # what was found is called positive, the rest not
    # a longer search changes nothing for the images already found: each keeps its first z2
    longer, _ = positive_realisation(generator, classifier, z1, {**cfg, "positive_steps": 80}, seed=0)
    torch.testing.assert_close(longer[found], z2[found])


def test_inversion_recovers_images_generated_from_known_codes(models, targets, inverted):
    # The targets are G(z) at known codes, so an inversion that works brings G(z_found) close to them.
    generator, _ = models
    z1, z2 = starting_codes(ROWS, CFG["restarts"], NZ1, NZ2, seed=1)
    with torch.no_grad():
        start_error = (generator(z1[::CFG["restarts"]], z2[::CFG["restarts"]]) - targets).pow(2).mean()
        found_error = (generator(inverted.z1, inverted.z2) - targets).pow(2).mean()
    assert found_error < 0.2 * start_error


def test_inversion_returns_the_lowest_loss_of_its_whole_path(models, targets):
    # The runs with fewer steps follow the same path (same seed and starts), so a run of s steps
    # returns the minimum over the path's first s + 1 points: it can never rise with s. A large
    # step size makes Adam overshoot, so a run returning its last codes instead would rise.
    generator, classifier = models
    cfg = {**CFG, "restarts": 1, "lr": 1.0}
    losses = torch.stack([invert(generator, classifier, targets, ROWS, {**cfg, "steps": s}, seed=1).loss
                          for s in range(13)])
    assert (losses.diff(dim=0) <= 0).all()
    assert (losses[-1] < losses[0]).all()


@pytest.mark.parametrize("p_target", [0.2, 0.9])
def test_inversion_loss_pulls_c_towards_its_call_on_the_image(models, targets, p_target):
    # BCE against C(x), not against "positive": with MSE switched off, the loss is
    # -(t log p + (1 - t) log(1 - p)) for p = C(G(z)) and t = C(x).
    generator, classifier = models
    z1, z2 = latents(len(ROWS), seed=5)
    target = torch.full((len(ROWS),), p_target)
    with torch.no_grad():
        loss = inversion_loss(generator, classifier, z1, z2, targets, target, {**CFG, "mse_weight": 0.0})
        p = positive_probability(classifier, generator(z1, z2)).clamp(1e-6, 1 - 1e-6)
    expected = CFG["bce_weight"] * -(target * p.log() + (1 - target) * (1 - p).log())
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_negative_counterfactuals_pass_on_the_precision_and_the_encoder(models, targets):
    generator, classifier = models
    torch.manual_seed(1)
    encoder = Encoder(NZ1, NZ2, SIZE, channels=1, width=0.0625).eval()
    cfg = {**CFG, "init": "encoder", "steps": 8, "positive_steps": 4, "positive_lr": 0.1}
    result = negative_counterfactuals(generator, classifier, targets, ROWS, cfg, 3, "bf16", encoder=encoder)
    codes = invert(generator, classifier, targets, ROWS, cfg, 3, "bf16", encoder, negative=True)
    z2, _ = positive_realisation(generator, classifier, codes.z1, cfg, 3, "bf16")
    assert torch.equal(result["z1"], codes.z1) and torch.equal(result["z2"], z2)
    assert not torch.equal(result["z1"], invert(generator, classifier, targets, ROWS, cfg, 3, "fp32", encoder,
                                                negative=True).z1)  # bf16 is another computation


def test_negative_counterfactuals_search_the_positive_realisation_at_the_precision_too():
    # the linear pair: C calls these negative, so the positive search moves (in bf16 its own way)
    generator, classifier = ShiftGenerator(), MeanClassifier()
    images = generator(torch.tensor([[-1.0, 0.0], [-2.0, 1.0]]), torch.zeros(2, 2)).detach()
    cfg = {**CFG, "steps": 3, "positive_steps": 2, "positive_lr": 0.05}
    runs = {precision: negative_counterfactuals(generator, classifier, images, ROWS[:2], cfg, 3, precision)
            for precision in ("bf16", "fp32")}
    for precision, result in runs.items():
        z2, _ = positive_realisation(generator, classifier, result["z1"], cfg, 3, precision)
        assert torch.equal(result["z2"], z2)
    assert not torch.equal(runs["bf16"]["z2"], runs["fp32"]["z2"])


@pytest.mark.parametrize("logit, target", [(-1000.0, 1.0), (1000.0, 0.0)])
def test_a_saturated_classifier_costs_the_clamped_bce_not_an_infinite_one(logit, target):
    # p is clamped to [1e-6, 1 - 1e-6]: a C that is certain and wrong costs -log(1e-6), about 13.8
    generator, classifier = ShiftGenerator(), MeanClassifier()
    with torch.no_grad():
        classifier.layer.weight.fill_(logit / 64)  # images of ones: logit = `logit`
    z1, z2 = torch.tensor([[1.0, 0.0]]), torch.zeros(1, 2)
    images = generator(z1, z2).detach()
    loss = inversion_loss(generator, classifier, z1, z2, images, torch.tensor([target]),
                          {"mse_weight": 1.0, "local_weight": 0.0, "local_patches": [4, 8], "bce_weight": 1.0})
    torch.testing.assert_close(loss, torch.tensor([-math.log(1e-6)]), rtol=1e-3, atol=0)


def test_the_inversion_loss_runs_the_networks_at_the_chosen_precision(models, targets):
    generator, classifier = models
    z1, z2 = latents(len(ROWS), seed=5)
    p = torch.full((len(ROWS),), 0.5)
    with torch.no_grad():
        losses = {precision: inversion_loss(generator, classifier, z1, z2, targets, p, CFG, precision)
                  for precision in ("bf16", "fp32")}
    assert losses["bf16"].dtype == losses["fp32"].dtype == torch.float32
    assert not torch.equal(losses["bf16"], losses["fp32"])
    torch.testing.assert_close(losses["bf16"], losses["fp32"], rtol=0.05, atol=0.05)


def test_negative_counterfactuals_are_the_negative_inversion_and_its_positive_realisation(models, targets):
    # Each piece must be what its parts compute on their own: the anatomy from the z2 = 0 inversion,
    # z2* from positive_realisation on that anatomy, the images G(z1, 0) and G(z1, z2*), and the
    # map |G(z1, z2*) - G(z1, 0)| averaged over channels.
    generator, classifier = models
    cfg = {**CFG, "positive_steps": 20, "positive_lr": 0.1}
    result = negative_counterfactuals(generator, classifier, targets, ROWS, cfg, 3)
    codes = invert(generator, classifier, targets, ROWS, cfg, 3, negative=True)
    z2, flipped = positive_realisation(generator, classifier, codes.z1, cfg, 3)
    with torch.no_grad():
        negative, positive = generator(codes.z1, torch.zeros_like(z2)), generator(codes.z1, z2)
    assert torch.equal(result["z1"], codes.z1) and torch.equal(result["z2"], z2)
    assert torch.equal(result["flipped"], flipped) and torch.equal(result["p_image"], codes.p_image)
    torch.testing.assert_close(result["negative"], negative)
    torch.testing.assert_close(result["positive"], positive)
    torch.testing.assert_close(result["p_negative"], positive_probability(classifier, negative))
    torch.testing.assert_close(result["p_positive"], positive_probability(classifier, positive))
    difference = (positive - negative).abs().mean(dim=1)
    torch.testing.assert_close(result["difference"], difference)
    torch.testing.assert_close(result["change_l1"], difference.flatten(1).mean(1))
    torch.testing.assert_close(result["z2_norm"], z2.norm(dim=1))


class FixedImage(nn.Module):
    """A generator that draws the same image whatever the codes (plus 0 * the codes, so the
    objective stays a function of them)."""

    def __init__(self, image: torch.Tensor):
        super().__init__()
        self.image = image

    def forward(self, z1, z2):
        return self.image + 0 * (z1.sum() + z2.sum())


def test_the_local_term_prefers_a_reconstruction_that_keeps_a_small_lesion():
    """Two reconstructions of an 8x8 image with a 2x2 lesion: one misses the lesion (whole-image
    MSE 0.0625), one keeps it but is off by 0.3 everywhere (MSE 0.09). The paper's objective
    prefers the first; with the worst-patch term weighted in, the second."""
    image = torch.zeros(1, 1, 8, 8)
    image[..., 2:4, 2:4] = 1.0
    losses = {}
    for local_weight in (0.0, 1.0):
        cfg = {**CFG, "local_weight": local_weight, "local_patches": [2, 4], "bce_weight": 0.0}
        losses[local_weight] = [inversion_loss(FixedImage(candidate), MeanClassifier(), torch.zeros(1, 2),
                                               torch.zeros(1, 2), image, torch.full((1,), 0.5), cfg).item()
                                for candidate in (torch.zeros_like(image), image + 0.3)]
    assert losses[0.0][0] < losses[0.0][1]
    assert losses[1.0][0] > losses[1.0][1]


def test_the_worst_patch_error_is_the_largest_patch_mean_averaged_over_sizes():
    error = torch.zeros(2, 1, 8, 8)
    error[0, 0, 0, 0] = 16.0  # one pixel: a 4x4 patch's mean 1, the 8x8 image's mean 0.25
    error[1] = 2.0            # uniform: every patch's mean 2
    torch.testing.assert_close(worst_patch_error(error, [4, 8]), torch.tensor([(1.0 + 0.25) / 2, 2.0]))
    torch.testing.assert_close(worst_patch_error(error.repeat(1, 3, 1, 1), [4]), torch.tensor([1.0, 2.0]))


# ------------------------------------------------------------------ reconstruct and its record

RECONSTRUCT_CFG = {**CFG, "steps": 6, "batch_size": 2}


def test_reconstruct_records_the_inversion_and_what_the_networks_make_of_it(models, targets):
    """Each field is what its own step computes: the codes, loss and C(x) of `invert` (run at the
    same precision, with the same encoder), G(z1, z2), G(z1, 0), C on both, and the error of
    G(z1, z2) against x; everything kept in float32 though the search ran in bf16."""
    generator, classifier = models
    torch.manual_seed(1)
    encoder = Encoder(NZ1, NZ2, SIZE, channels=1, width=0.0625).eval()
    cfg = {**RECONSTRUCT_CFG, "init": "encoder"}
    record = reconstruct(generator, classifier, targets, ROWS, cfg, 3, "bf16", encoder)
    codes = invert(generator, classifier, targets, ROWS, cfg, 3, "bf16", encoder)
    assert not torch.equal(codes.z1, invert(generator, classifier, targets, ROWS, cfg, 3, "fp32", encoder).z1)
    assert torch.equal(record.rows, ROWS)
    for name in ("z1", "z2", "loss", "p_image"):
        assert torch.equal(getattr(record, name), getattr(codes, name)), name
    with torch.no_grad():
        reconstruction, negative = generator(codes.z1, codes.z2), generator(codes.z1, torch.zeros_like(codes.z2))
        torch.testing.assert_close(record.reconstruction, reconstruction)
        torch.testing.assert_close(record.negative, negative)
        torch.testing.assert_close(record.p_reconstruction, positive_probability(classifier, reconstruction))
        torch.testing.assert_close(record.p_negative, positive_probability(classifier, negative))
    assert not torch.allclose(record.negative, record.reconstruction)
    torch.testing.assert_close(record.mse, reconstruction_mse(reconstruction, targets))
    torch.testing.assert_close(record.ssim, reconstruction_ssim(reconstruction, targets))
    assert record.mse.shape == record.ssim.shape == (len(ROWS),)
    assert not record.judged_by_oracle
    for name, tensor in record.tensors().items():
        assert tensor.dtype == (torch.int64 if name == "rows" else torch.float32), name


def test_reconstructing_in_parts_gives_the_whole_sets_numbers(models, targets):
    # parts that start on a multiple of the batch size are cut into the whole set's batches
    generator, classifier = models
    whole = reconstruct(generator, classifier, targets, ROWS, RECONSTRUCT_CFG, seed=1)
    parts = [reconstruct(generator, classifier, targets[part], ROWS[part], RECONSTRUCT_CFG, seed=1)
             for part in (slice(0, 2), slice(2, 4))]
    assert whole.tensors().keys() == parts[0].tensors().keys()
    for name, tensor in whole.tensors().items():
        assert torch.equal(torch.cat([getattr(part, name) for part in parts]), tensor), name
    assert not torch.equal(parts[0].ssim, parts[1].ssim)  # each part scores its own images


def test_a_record_lists_its_set_tensors_and_takes_changes_as_a_copy(models, targets):
    generator, classifier = models
    record = reconstruct(generator, classifier, targets, ROWS, {**RECONSTRUCT_CFG, "steps": 1}, seed=1)
    names = [f.name for f in dataclasses.fields(InversionRecord)]
    assert list(record.tensors()) == names[:-4]  # the oracle's probabilities and tuned weights are not set yet
    for name, tensor in record.tensors().items():
        assert tensor is getattr(record, name)
    judged = record.with_(p_oracle_image=record.p_image + 1, p_oracle_negative=record.p_negative)
    assert judged.judged_by_oracle and not record.judged_by_oracle
    assert list(judged.tensors()) == [name for name in names if name not in ("p_oracle_reconstruction", "lesion_weights")]
    assert torch.equal(judged.p_oracle_image, record.p_image + 1) and judged.z1 is record.z1
    assert torch.equal(judged.subset([2, 0]).p_oracle_image, record.p_image[[2, 0]] + 1)
    assert judged.codes == (record.z1, record.z2)
