"""Per-image tuning of the masked G's lesion branch (medxgan.tuning)."""

import copy

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from medxgan.artifacts import read_inversion, write_inversion
from medxgan.config import ConfigError
from medxgan.data.manifest import ImageSet
from medxgan.evaluate import robustness, scoring
from medxgan.explainers import build_explainer
from medxgan.inversion import reconstruct
from medxgan.nets.networks import Generator, MaskedGenerator, dcgan_init
from medxgan.tuning import (RESIDUAL, TunedGenerator, branch_shapes, check_tunable, completion_region, from_vectors,
                            removal_evidence, tune_lesion_branch, tuning_loss)
from helpers import TUNING_OFF, RegionClassifier, calibrate_batch_norm

NZ1, NZ2, SIZE = 8, 4, 64
LESION = (slice(12, 20), slice(12, 20))  # inside RegionClassifier's rows/cols 8..24
TUNING = {**TUNING_OFF, "steps": 120, "lr": 1e-3}
EXPLAIN = {"batch_size": 8, "interpolation_points": 3, "latent_ig_steps": 4, "latent_ig_form": "path", "ig_steps": 4,
           "ig_baseline": -1.0, "ig_blur_kernel": 5, "ig_blur_sigma": 2.0, "latent_shift_max": 2.0,
           "latent_shift_search_steps": 2, "latent_shift_drop": 0.8, "latent_shift_frames": 3}


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    G = MaskedGenerator(NZ1, NZ2, SIZE, channels=1, width=0.0625, upsampling="resize")
    dcgan_init(G)
    rng = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(32, NZ1, generator=rng), torch.randn(32, NZ2, generator=rng)
    calibrate_batch_norm(G, z1, z2)
    return G.requires_grad_(False), RegionClassifier(gain=8.0).requires_grad_(False)


@pytest.fixture(scope="module")
def case(pair):
    """Codes, and images that are G's drawing at those codes plus a bright square G does not draw."""
    G, _ = pair
    rng = torch.Generator().manual_seed(2)
    z1, z2 = torch.randn(3, NZ1, generator=rng), torch.randn(3, NZ2, generator=rng)
    with torch.no_grad():
        images = G(z1, z2)
    images[:, :, LESION[0], LESION[1]] = 1.0
    return z1, z2, images


def tuned_lesion(G: MaskedGenerator, weights: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """L's output for each code with its image's weights, one image at a time, plus its residual image."""
    params, buffers = from_vectors(weights, branch_shapes(G)), dict(G.lesion.named_buffers())
    residual = params.pop(RESIDUAL)
    lesion = torch.cat([functional_call(G.lesion, ({k: v[i] for k, v in params.items()}, buffers),
                                        (z1[i:i + 1], z2[i:i + 1])) for i in range(len(z1))])
    lesion[:, :-1] += residual
    return lesion


@pytest.fixture(scope="module")
def tuned(pair, case):
    G, C = pair
    z1, z2, images = case
    before = copy.deepcopy(G.state_dict())
    weights, code = tune_lesion_branch(G, C, images, z1, z2, TUNING)
    assert all(torch.equal(before[k], v) for k, v in G.state_dict().items())  # G itself is not tuned
    assert torch.equal(code, z2)  # code_lr 0: z2 as inverted
    return weights


def test_tuning_moves_the_mask_onto_the_lesion_the_inversion_missed(pair, case, tuned):
    G, C = pair
    z1, z2, images = case
    assert tuned.shape == (3, sum(p.numel() for p in G.lesion.parameters()) + SIZE * SIZE)
    assert not from_vectors(tuned, branch_shapes(G))[RESIDUAL].any()  # residual_lr 0: no residual
    with torch.no_grad():
        anatomy = G.anatomy(z1, z2[:, :0])
        _, before = G.blend(anatomy, G.lesion(z1, z2), z2)
        _, after = G.blend(anatomy, tuned_lesion(G, tuned, z1, z2), z2)
        untuned = {name: p.expand(3, *p.shape) for name, p in G.lesion.named_parameters()}
        loss_before = tuning_loss(G, C, untuned, z1, z2, images, anatomy, TUNING)
        loss_after = tuning_loss(G, C, from_vectors(tuned, branch_shapes(G)), z1, z2, images, anatomy, TUNING)
    inside = (slice(None), slice(None), *LESION)
    assert before[inside].mean() < 2 * before.mean()  # G's own mask is not on the square ...
    assert after[inside].mean() > 4 * after.mean()  # ... each image's tuned one is
    assert (loss_after < 0.95 * loss_before).all()


def test_the_tuned_generator_draws_tuned_codes_with_their_weights_and_others_with_gs(pair, case, tuned):
    G, _ = pair
    z1, z2, _ = case
    generator = TunedGenerator(G, z1, tuned)
    other = torch.randn(2, NZ1, generator=torch.Generator().manual_seed(9))
    # a latent path's batch: the images' codes repeated, out of order, beside codes of no tuned image
    order = torch.tensor([2, 0, 0, 1, 2])
    batch_z1, batch_z2 = torch.cat([z1[order], other]), torch.cat([z2[order] * 0.5, z2[:2]])
    with torch.no_grad():
        drawn = generator(batch_z1, batch_z2)
        expected = G.blend(G.anatomy(z1[order], z2[order, :0]), tuned_lesion(G, tuned[order], z1[order], z2[order] * 0.5),
                           z2[order] * 0.5)[0]
        assert torch.allclose(drawn[:5], expected, atol=1e-6)
        assert torch.allclose(drawn[5:], G(other, z2[:2]), atol=1e-6)  # (another batch size rounds otherwise)
        image, mask = generator.compose(batch_z1, batch_z2)
        assert torch.equal(image, drawn)
        expected_mask = G.blend(G.anatomy(z1[order], z2[order, :0]),
                                tuned_lesion(G, tuned[order], z1[order], z2[order] * 0.5), z2[order] * 0.5)[1]
        assert torch.allclose(mask[:5], expected_mask, atol=1e-6)
        assert torch.allclose(mask[5:], G.compose(other, z2[:2])[1], atol=1e-6)
        assert torch.equal(generator(z1, torch.zeros_like(z2)), G(z1, torch.zeros_like(z2)))  # G(z1, 0) bit for bit
        assert not torch.allclose(drawn[:5], G(batch_z1[:5], batch_z2[:5]), atol=1e-3)  # the tuning shows


def test_each_image_is_tuned_as_it_would_be_alone(pair, case):
    G, C = (copy.deepcopy(network).double() for network in pair)
    z1, z2, images = (t.double() for t in case)
    cfg = {**TUNING, "steps": 5, "code_lr": 0.05}
    (together, together_codes), (alone, alone_code) = (tune_lesion_branch(G, C, images[rows], z1[rows], z2[rows], cfg)
                                                       for rows in (slice(None), slice(1, 2)))
    assert torch.allclose(together[1:2], alone, atol=1e-9, rtol=0)
    assert torch.allclose(together_codes[1:2], alone_code, atol=1e-9, rtol=0)
    assert not torch.allclose(together[0], together[1])


def test_a_lesion_code_of_small_norm_caps_the_mask_unless_the_code_is_tuned_too(pair, case):
    G, C = pair
    z1, z2, images = case
    gate = 0.3  # the mask's ceiling, tanh(2 |z2| / sqrt(nz2)), at a z2 of this norm
    small = z2 / z2.norm(dim=1, keepdim=True) * torch.atanh(torch.tensor(gate)) * NZ2 ** 0.5 / 2
    inside = (slice(None), slice(None), *LESION)
    masks = {}
    for code_lr in (0.0, 0.05):
        weights, code = tune_lesion_branch(G, C, images, z1, small, {**TUNING, "steps": 200, "code_lr": code_lr})
        assert torch.equal(code, small) == (code_lr == 0)
        with torch.no_grad():
            masks[code_lr] = G.blend(G.anatomy(z1, code[:, :0]), tuned_lesion(G, weights, z1, code), code)[1][inside]
            assert torch.equal(TunedGenerator(G, z1, weights)(z1, torch.zeros_like(code)), G(z1, torch.zeros_like(code)))
    assert masks[0.0].max() <= gate + 1e-6  # tuning L alone cannot raise the mask over the gate ...
    assert (masks[0.05].flatten(1).mean(1) > 0.8).all()  # ... the tuned code opens it over the lesion


def test_a_residual_image_draws_what_l_cannot_where_the_mask_is_and_leaves_g_z1_0_bit_identical(pair, case):
    G, C = pair
    z1, z2, images = case
    errors = {}
    for residual_lr in (0.0, 0.1):
        weights, code = tune_lesion_branch(G, C, images, z1, z2, {**TUNING, "residual_lr": residual_lr})
        generator = TunedGenerator(G, z1, weights)
        with torch.no_grad():
            drawn, mask = generator.compose(z1, code)
            assert torch.equal(generator(z1, torch.zeros_like(code)), G(z1, torch.zeros_like(code)))
        # G(z1, z2)'s error against x, weighed by the mask: where it may differ from G0
        errors[residual_lr] = ((drawn - images).pow(2) * mask).sum() / mask.sum()
        residual = from_vectors(weights, branch_shapes(G))[RESIDUAL]
        assert residual.any() == (residual_lr > 0)
    assert errors[0.1] < 0.6 * errors[0.0]  # measured: 0.45x


def test_the_tuning_loss_is_its_five_weighted_terms(pair, case):
    G, C = pair
    z1, z2, images = case
    params = {name: p.expand(3, *p.shape) for name, p in G.lesion.named_parameters()}
    anatomy = G.anatomy(z1, z2[:, :0])
    lesion = G.lesion(z1, z2)
    drawn, mask = G.blend(anatomy, lesion, z2)
    removed = (1 - mask) * images + mask * anatomy
    positive = F.cross_entropy(C(drawn), torch.ones(3, dtype=torch.long), reduction="none")
    negative = F.cross_entropy(C(removed), torch.zeros(3, dtype=torch.long), reduction="none")
    branch_error = (lesion[:, :1] - images).pow(2)
    terms = {"mse_weight": (drawn - images).pow(2).flatten(1).mean(1), "removal_weight": negative,
             "mask_weight": mask.flatten(1).mean(1),
             "lesion_weight": (mask * branch_error).flatten(1).sum(1) / mask.flatten(1).sum(1),
             "image_weight": branch_error.flatten(1).mean(1)}
    weights = {"mse_weight": 2.0, "removal_weight": 3.0, "mask_weight": 5.0, "lesion_weight": 7.0, "image_weight": 11.0}
    expected = positive + sum(weights[name] * term for name, term in terms.items())
    loss = tuning_loss(G, C, params, z1, z2, images, anatomy, {**TUNING, **weights})
    assert torch.allclose(loss, expected, atol=1e-5)


def test_an_empty_mask_weighs_the_branch_error_by_one_pixel_not_zero(pair, case):
    G, C = pair
    z1, _, images = case
    zero = torch.zeros(3, NZ2)  # the gate closes the mask
    params = {name: p.expand(3, *p.shape) for name, p in G.lesion.named_parameters()}
    cfg = {**TUNING_OFF, "mse_weight": 0.0, "removal_weight": 0.0, "mask_weight": 0.0, "lesion_weight": 1.0,
           "image_weight": 0.0}
    loss = tuning_loss(G, C, params, z1, zero, images, G.anatomy(z1, zero[:, :0]), cfg)
    # only C's call on the drawing remains: the lesion term is 0 / 1, not 0 / 0
    assert torch.isfinite(loss).all()
    assert torch.allclose(loss, F.cross_entropy(C(G(z1, zero)), torch.ones(3, dtype=torch.long), reduction="none"))


def test_reconstruct_records_the_tuned_pair_and_its_weights(pair, case, tmp_path):
    G, C = pair
    z1, z2, images = case
    cfg = {"init": "random", "restarts": 1, "steps": 2, "lr": 0.05, "mse_weight": 10.0, "local_weight": 0.0,
           "local_patches": [4], "bce_weight": 1.0, "batch_size": 2, "tuning": {**TUNING, "steps": 3}}
    rows = torch.tensor([4, 1, 7])
    record = reconstruct(G, C, images, rows, cfg, seed=0)
    plain = reconstruct(G, C, images, rows, {**cfg, "tuning": TUNING_OFF}, seed=0)
    assert plain.lesion_weights is None and record.lesion_weights.shape[0] == 3
    assert torch.equal(record.z1, plain.z1) and torch.equal(record.negative, plain.negative)
    assert torch.equal(record.z2, plain.z2)  # code_lr 0
    coded = reconstruct(G, C, images, rows, {**cfg, "tuning": {**cfg["tuning"], "code_lr": 0.1}}, seed=0)
    assert not torch.allclose(coded.z2, plain.z2) and torch.equal(coded.negative, plain.negative)
    with torch.no_grad():  # the record's z2 is the tuned code the reconstruction was drawn at
        assert torch.allclose(coded.reconstruction, coded.drawn_by(G)(coded.z1, coded.z2), atol=1e-6)
    generator = record.drawn_by(G)
    with torch.no_grad():
        assert torch.allclose(record.reconstruction, generator(record.z1, record.z2), atol=1e-6)
    assert not torch.allclose(record.reconstruction, plain.reconstruction, atol=1e-4)
    assert plain.drawn_by(G) is G

    data = ImageSet(images, torch.ones(3, dtype=torch.long), torch.zeros(3, SIZE, SIZE, dtype=torch.bool),
                    torch.zeros(3, dtype=torch.bool), ["a", "b", "c"], rows)
    write_inversion(record, data.ids, tmp_path, {})
    again = read_inversion(tmp_path / "latents.safetensors", data)
    assert torch.equal(again.lesion_weights, record.lesion_weights)
    assert torch.equal(read_inversion(tmp_path / "latents.safetensors", data.subset([1, 2]), slice(1, 3)).lesion_weights,
                       record.lesion_weights[1:])


def test_the_robustness_check_inverts_its_perturbed_copies_in_one_call_and_reuses_the_steps_record(pair, case,
                                                                                                    monkeypatch):
    G, C = pair
    _, _, images = case
    inversion = {"init": "random", "restarts": 1, "steps": 2, "lr": 0.05, "mse_weight": 10.0, "local_weight": 0.0,
                 "local_patches": [4], "bce_weight": 1.0, "batch_size": 3, "tuning": {**TUNING, "steps": 3, "code_lr": 0.1}}
    rows = torch.tensor([4, 1, 7])
    data = ImageSet(images, torch.ones(3, dtype=torch.long), torch.zeros(3, SIZE, SIZE, dtype=torch.bool),
                    torch.zeros(3, dtype=torch.bool), ["a", "b", "c"], rows)
    s = {"seed": 0, "precision": "fp32", "inversion": inversion, "explain": {**EXPLAIN, "methods": ["difference", "ig"]},
         "checks": {"noise_sigmas": [0.1], "sensitivity_radius": 0.05, "sensitivity_samples": 1}}
    inverted = []
    monkeypatch.setattr(scoring, "reconstruct",
                        lambda G, C, images, *rest: inverted.append(images) or reconstruct(G, C, images, *rest))
    alone = scoring.robustness_table(C, G, data, s)
    # one call: the clean images (sigma 0 too), sigma 0.1, one max-sensitivity sample
    noisy = robustness.add_noise(images, 0.1, 0)
    assert len(inverted) == 1 and torch.equal(inverted[0][:3], images) and torch.equal(inverted[0][3:6], noisy)
    record = reconstruct(G, C, images, rows, inversion, 0, "fp32")
    inverted.clear()
    given = scoring.robustness_table(C, G, data, s, record=record)
    assert len(inverted) == 1 and len(inverted[0]) == 6 and not torch.equal(inverted[0][:3], images)
    pd.testing.assert_frame_equal(given, alone)  # the step's record is what a second inversion would give
    # each copy's record is its own inversion (the batches here hold one copy each, so to the bit)
    together = scoring._invert_together([images, noisy], {}, C, G, rows, s, None)
    for perturbed in (images, noisy):
        own = reconstruct(G, C, perturbed, rows, inversion, 0, "fp32").tensors()
        for name, tensor in together[scoring._image_key(perturbed)].tensors().items():
            assert torch.equal(tensor, own[name]), name


def test_the_difference_map_reads_the_tuned_branch_and_latent_shift_reads_g(pair, case, tuned):
    G, C = pair
    z1, z2, images = case
    generator = TunedGenerator(G, z1, tuned)
    difference = build_explainer("difference", C, generator, EXPLAIN)
    assert difference.generator is generator and build_explainer("latent_shift", C, generator, EXPLAIN).generator is G
    with torch.no_grad():
        expected = (generator(z1, z2) - G(z1, torch.zeros_like(z2))).abs()[:, 0]
    assert torch.allclose(difference.attribute(images, latents=(z1, z2)), expected, atol=1e-6)


def test_tuning_a_plain_generator_is_refused_and_steps_0_accepts_it():
    plain = Generator(NZ1, NZ2, SIZE, channels=1, width=0.0625)
    with pytest.raises(ConfigError, match="gan.composition: masked"):
        check_tunable(plain, {"steps": 1})
    check_tunable(plain, {"steps": 0})


def test_weights_recorded_without_a_residual_draw_as_a_zero_residual(pair, case, tuned):
    G, _ = pair
    z1, z2, _ = case
    without = tuned[:, :-SIZE * SIZE]  # the branch's weights alone, as records were written before residuals
    with torch.no_grad():
        assert torch.equal(TunedGenerator(G, z1, without)(z1, z2), TunedGenerator(G, z1, tuned)(z1, z2))
    with pytest.raises(ValueError, match="written with another G"):
        TunedGenerator(G, z1, tuned[:, :-1])  # any other length is not a branch of this G


def test_tuned_weights_must_match_the_codes(pair, case, tuned):
    G, _ = pair
    z1, _, _ = case
    with pytest.raises(ValueError, match="2 images given with 3 anatomy codes"):
        TunedGenerator(G, z1, tuned[:2])


def disk(radius: float, centre=(32, 32), size: int = SIZE) -> torch.Tensor:
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return ((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius ** 2).float()


def between(region: torch.Tensor, inner: float, outer: float) -> bool:
    """Whether a region holds the centred disk of radius `inner` and lies inside that of radius `outer`."""
    return bool((region >= disk(inner)).all() and (region <= disk(outer)).all())


def test_the_completion_region_grows_the_mask_over_its_lesion_in_one_piece_and_within_reach():
    # x differs from G0 over a disk of radius 12 and over a far blob; the mask's core is the middle
    # (radius 6): the region is the core grown by at most half its radius (3 px), over the disk only
    anatomy = torch.zeros(2, 1, SIZE, SIZE)
    images = (0.5 * disk(12) + 0.5 * disk(3, centre=(8, 56)))[None, None].repeat(2, 1, 1, 1)
    mask = torch.stack([disk(6), torch.zeros(SIZE, SIZE)])[:, None] * 0.9
    cfg = {**TUNING, "completion_level": 0.5, "completion_reach": 0.5}
    region = completion_region(images, anatomy, mask, cfg)
    assert region.shape == mask.shape and set(region.unique().tolist()) <= {0.0, 1.0}
    assert between(region[0, 0], 8, 10)  # 6 + 3 px: the reach, inside the disk
    assert not region[1].any()  # no core: nothing to complete
    wider = completion_region(images, anatomy, mask, {**cfg, "completion_reach": 5.0})
    assert between(wider[0, 0], 11.5, 13) and not wider[0, 0, :16, 48:].any()  # the disk, not the blob apart
    stricter = completion_region(images, anatomy, mask, {**cfg, "completion_reach": 5.0, "completion_level": 2.0})
    assert torch.equal(stricter[0, 0], disk(6))  # nothing differs by twice the core's median: the core alone


def test_with_evidence_the_completion_grows_only_where_c_reads_x_as_more_positive_than_g0():
    # C's positive logit is the mean of rows/cols 8..24. Image 0 is brighter than G0 over a disk of
    # radius 12 at (16, 16), of which only the part in that square adds to the logit; image 1 is darker there.
    anatomy = torch.zeros(2, 1, SIZE, SIZE)
    bright = disk(12, centre=(16, 16))
    images = torch.stack([0.5 * bright, -0.5 * bright])[:, None]
    core = disk(4, centre=(16, 16))
    mask = 0.9 * core[None, None].repeat(2, 1, 1, 1)
    evidence = torch.from_numpy(removal_evidence(RegionClassifier(gain=8.0), images, anatomy, mask))
    square = torch.zeros(SIZE, SIZE)
    square[8:24, 8:24] = 1.0
    near = F.max_pool2d((square * bright)[None, None], 3, stride=1, padding=1)[0, 0].bool()  # one pixel of smoothing
    assert torch.equal(evidence[0] > 0, near)
    assert not (evidence[1] > 0).any()  # darker than G0: against C's positive call everywhere
    cfg = {**TUNING, "completion_level": 0.5, "completion_reach": 5.0}
    level_only = completion_region(images.abs(), anatomy, mask, cfg)[0, 0].bool()
    with_evidence = completion_region(images.abs(), anatomy, mask, cfg, evidence.numpy())
    outside = disk(11, centre=(16, 16)).bool() & ~near
    assert level_only[outside].all()  # the level rule alone takes the disk (but its rim, smoothed below the level)
    assert not with_evidence[0, 0][outside].any() and with_evidence[0, 0][(square * bright).bool()].all()
    assert torch.equal(with_evidence[1, 0], core)  # no evidence: the core alone


def test_completion_steps_cover_the_lesion_c_does_not_need_and_leave_g_z1_0_bit_identical(pair, case):
    G, C = pair
    z1, z2, _ = case
    with torch.no_grad():
        images = G(z1, z2)
    images[:, :, 12:20, 12:32] = 1.0  # columns 24..32 of the lesion lie outside what C reads
    unseen = (slice(None), slice(None), slice(12, 20), slice(24, 32))
    covered, errors = {}, {}
    for name, steps, evidence in (("tuned", 0, False), ("completed", 60, False), ("with evidence", 60, True)):
        cfg = {**TUNING, "residual_lr": 0.1, "code_lr": 0.01, "completion_steps": steps, "completion_reach": 2.0,
               "completion_evidence": evidence}
        weights, code = tune_lesion_branch(G, C, images, z1, z2, cfg)
        generator = TunedGenerator(G, z1, weights)
        with torch.no_grad():
            drawn, mask = generator.compose(z1, code)
            assert torch.equal(generator(z1, torch.zeros_like(code)), G(z1, torch.zeros_like(code)))
        covered[name] = mask[unseen].mean()
        errors[name] = (drawn - images)[unseen].pow(2).mean()
    assert covered["tuned"] < 0.1 and covered["completed"] > 0.5  # measured: 0.005 and 0.96
    assert errors["completed"] < 0.1 * errors["tuned"]  # measured: 0.015x
    # C's gradient is 0 there: the evidence rule keeps it out but for the column its 3 x 3 smoothing reaches
    assert covered["with evidence"] < 0.25 * covered["completed"]  # measured: 0.14 against 0.96


def test_the_robustness_check_explains_each_distinct_image_set_once_per_method(pair, case, monkeypatch):
    G, C = pair
    _, _, images = case
    data = ImageSet(images, torch.ones(3, dtype=torch.long), torch.zeros(3, SIZE, SIZE, dtype=torch.bool),
                    torch.zeros(3, dtype=torch.bool), ["a", "b", "c"], torch.tensor([4, 1, 7]))
    s = {"seed": 0, "precision": "fp32", "explain": {**EXPLAIN, "methods": ["ig", "ig_blur"]},
         "checks": {"noise_sigmas": [0.1, 0.2], "sensitivity_radius": 0.05, "sensitivity_samples": 2}}
    explained = []
    heatmaps_for = scoring.heatmaps_for
    monkeypatch.setattr(scoring, "heatmaps_for", lambda method, C, G, images, *rest, **options: explained.append(
        (method, scoring._image_key(images))) or heatmaps_for(method, C, G, images, *rest, **options))
    table = scoring.robustness_table(C, G, data, s)
    # the clean images (also sigma 0 and max-sensitivity's reference), two noise levels, two samples
    assert len(set(explained)) == len(explained) == 2 * 5
    # the same numbers as explaining every call afresh
    monkeypatch.setattr(scoring, "_image_key", lambda images, count=iter(range(10 ** 6)): str(next(count)))
    pd.testing.assert_frame_equal(scoring.robustness_table(C, G, data, s), table)
