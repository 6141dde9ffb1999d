import copy
import logging
import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.module import register_module_forward_hook
from torch.optim.optimizer import register_optimizer_step_post_hook

from medxgan.data.manifest import ImageSet, load_split
from medxgan.data.phantoms import PHANTOMS, write_phantom_dataset
from medxgan.nets.encoder import Encoder
from medxgan.nets.networks import Generator, SimpleCNN
from medxgan.nets.kinds import build_from_spec
from medxgan.train.gan import GANTrainer, disentanglement_check, mask_area, proximity, reconstruction_terms
from medxgan.torch_utils import batch_indices, sample_codes
from medxgan.train.classifier import evaluate_classifier, random_flips, train_classifier

SIZE = 64
DATA_CFG = {"image_size": SIZE, "channels": 1}
GAN_CFG = {"steps": 12, "checkpoint_every": 4, "width": 0.0625, "d_width": 0.0625, "d_dropout": 0.0, "nz1": 8, "nz2": 4, "batch_size": 8,
           "lambda_cls": 1.0, "lr": 2e-4, "betas": [0.5, 0.999], "disentanglement_samples": 8,
           "upsampling": "transposed", "discriminator": "unconditional", "proximity_weight": 0.0,
           "reconstruction_weight": 0.0,
           "composition": "plain", "mask_sparsity_weight": 0.0, "ema_decay": 0.0, "d_fakes": "own", "lesion_rows": "all"}
# 3 epochs of 8 steps: the training loss falls (measured 0.82 -> 0.58 for seed 0; 0.92 -> 0.43 and 0.97 -> 0.49
# for seeds 1, 2), while eval-mode accuracy is still ~0.5 because batch-norm running statistics lag this early.
CLASSIFIER_CFG = {"arch": "simple_cnn", "width": 0.5, "weights": None, "epochs": 3, "batch_size": 8, "lr": 1e-3,
                  "betas": [0.5, 0.999], "flips": True}
KILL_AFTER = 8


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    manifest = write_phantom_dataset("synthetic-mri", tmp_path_factory.mktemp("phantoms") / "mri", SIZE,
                                     {"train": 64, "val": 16}, 0.5, seed=0)
    kind = PHANTOMS["synthetic-mri"]
    return {split: load_split(manifest, split, kind.negative, kind.positive, SIZE, 1) for split in ("train", "val")}


@pytest.fixture(scope="module")
def frozen_classifier():
    torch.manual_seed(0)
    return SimpleCNN(SIZE, 1, width=0.25).eval().requires_grad_(False)


# ---------------------------------------------------------------------------------- batches and codes

def epoch_batches(n, batch_size, epoch, seed):
    per_epoch = n // batch_size
    return [batch_indices(n, batch_size, epoch * per_epoch + p, seed) for p in range(per_epoch)]


def test_each_epoch_is_a_permutation():
    n, batch_size = 24, 6
    for epoch in range(3):
        batches = epoch_batches(n, batch_size, epoch, seed=5)
        assert all(len(b) == batch_size for b in batches)
        assert torch.equal(torch.cat(batches).sort().values, torch.arange(n))


def test_a_partial_last_batch_is_dropped_and_nothing_repeats():
    n, batch_size = 26, 6  # 4 full batches, 2 images left out each epoch
    for epoch in range(3):
        seen = torch.cat(epoch_batches(n, batch_size, epoch, seed=5))
        assert len(seen) == 24 and seen.unique().numel() == 24
        assert seen.min() >= 0 and seen.max() < n


@pytest.mark.parametrize("n", [4, 10])
def test_a_set_of_less_than_two_batches_gives_one_batch_per_epoch(n):
    # 4 images: one short batch of all four; 10: one batch of 6, four left out
    for step in range(3):  # each step is an epoch of its own
        batch = batch_indices(n, 6, step, seed=5)
        assert len(batch) == batch.unique().numel() == min(n, 6) and 0 <= batch.min() and batch.max() < n


def test_batches_are_seeded_and_epochs_differ():
    n, batch_size = 24, 6
    first = torch.cat(epoch_batches(n, batch_size, 0, seed=5))
    assert torch.equal(first, torch.cat(epoch_batches(n, batch_size, 0, seed=5)))
    assert not torch.equal(first, torch.cat(epoch_batches(n, batch_size, 1, seed=5)))
    assert not torch.equal(first, torch.cat(epoch_batches(n, batch_size, 0, seed=6)))
    # Any step's batch is known without replaying the run.
    assert torch.equal(batch_indices(n, batch_size, 9, seed=5), epoch_batches(n, batch_size, 2, seed=5)[1])


def test_sample_codes_zero_pathology_for_negatives():
    labels = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
    z1, z2 = sample_codes(labels, 8, 4, torch.Generator().manual_seed(0))
    assert z1.shape == (8, 8) and z2.shape == (8, 4)
    assert (z2[labels == 0] == 0).all()
    assert (z2[labels == 1] != 0).all()
    assert (z1 != 0).all()
    assert z2[labels == 1].unique(dim=0).shape[0] == 4 and z1.unique(dim=0).shape[0] == 8  # a draw per code
    again = sample_codes(labels, 8, 4, torch.Generator().manual_seed(0))
    assert torch.equal(again[0], z1) and torch.equal(again[1], z2)


def test_random_flips_give_each_of_the_four_orientations_a_quarter_of_the_time():
    pattern = torch.arange(12.0).view(1, 1, 3, 4)  # no symmetry: every flip is told apart
    orientations = [pattern, pattern.flip(3), pattern.flip(2), pattern.flip(2).flip(3)]
    torch.manual_seed(0)
    global_state = torch.get_rng_state()
    flipped = random_flips(pattern.repeat(400, 1, 1, 1), torch.Generator().manual_seed(3))
    assert torch.equal(torch.get_rng_state(), global_state)  # only the given generator is drawn from
    counts = [sum(torch.equal(image[None], o) for image in flipped) for o in orientations]
    assert sum(counts) == 400 and all(60 <= count <= 140 for count in counts), counts  # 100 +- 4.6 sd
    assert torch.equal(random_flips(pattern.repeat(400, 1, 1, 1), torch.Generator().manual_seed(3)), flipped)


def test_proximity_is_the_mean_change_over_the_positive_codes_pixels():
    fake = torch.arange(24.0).view(4, 1, 2, 3)
    positives = torch.tensor([True, False, True, False])
    negatives = fake[positives] - torch.tensor([1.0, -3.0]).view(2, 1, 1, 1)  # changes of 1 and 3
    assert proximity(fake, negatives, positives).item() == 2.0
    one = torch.tensor([False, True, False, False])
    assert proximity(fake, fake[one] + 0.5, one).item() == 0.5
    nothing = torch.zeros(4, dtype=torch.bool)
    assert proximity(fake, fake[nothing], nothing).item() == 0.0 and proximity(fake, None, positives).item() == 0.0


def test_mask_area_is_the_mean_mask_over_the_positive_codes():
    mask = torch.tensor([0.0, 1.0, 0.5, 0.25]).view(4, 1, 1, 1).expand(4, 1, 2, 2)
    assert mask_area(mask, torch.tensor([False, True, True, False])).item() == 0.75
    assert mask_area(mask, torch.zeros(4, dtype=torch.bool)).item() == 0.0
    assert mask_area(None, torch.tensor([True, True, False, False])).item() == 0.0


# ---------------------------------------------------------------------------------- classifier

@pytest.mark.parametrize("seed", [0, 1])
def test_train_classifier_lowers_its_loss(phantoms, seed):
    model, report = train_classifier(phantoms["train"], phantoms["val"], CLASSIFIER_CFG, DATA_CFG, seed=seed,
                                     device="cpu")
    history = report["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert all(0 <= h["val_accuracy"] <= 1 for h in history)
    assert report["spec"] == {"kind": "classifier", "arch": "simple_cnn", "image_size": SIZE, "channels": 1,
                              "width": CLASSIFIER_CFG["width"]}
    assert not any(m.training for m in model.modules())
    assert not any(p.requires_grad for p in model.parameters())
    assert model(phantoms["val"].images[:2]).shape == (2, 2)


def brightness_set(n: int, seed: int, flip_labels: bool = False) -> ImageSet:
    """Positives bright, negatives dark, plus noise; with flip_labels, each image carries the other label."""
    labels = torch.arange(n) % 2
    noise = 0.2 * torch.randn(n, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
    images = (labels.float() * 1.2 - 0.6).view(-1, 1, 1, 1) + noise
    return ImageSet(images.clamp(-1, 1), 1 - labels if flip_labels else labels,
                    torch.zeros(n, SIZE, SIZE, dtype=torch.bool), torch.zeros(n, dtype=torch.bool),
                    [f"i{k}" for k in range(n)], torch.arange(n))


def test_the_best_validation_epoch_is_restored_not_the_last():
    """The validation labels are the opposite of what training teaches, so the more C learns, the worse
    its validation accuracy: the curve peaks early, and C must come back with that epoch's weights."""
    cfg = {**CLASSIFIER_CFG, "width": 0.25, "epochs": 3, "lr": 1e-4, "flips": False}
    train, val = brightness_set(32, seed=0), brightness_set(16, seed=1, flip_labels=True)
    model, report = train_classifier(train, val, cfg, DATA_CFG, seed=0, device="cpu")
    curve = [h["val_accuracy"] for h in report["history"]]
    best = max(curve)
    # The first epoch with the best accuracy: a later one that only ties it has trained longer on
    # what hurts validation (here the first two epochs tie at chance, before C has learnt anything).
    assert report["selected_epoch"] == curve.index(best) + 1
    assert report["selected_epoch"] < cfg["epochs"] and curve[-1] < best  # the set-up does what it is for
    assert evaluate_classifier(model, val, "cpu")["accuracy"] == best
    # The same run stopped at the selected epoch ends on exactly those weights (batches, flips and
    # dropout are all seeded): the returned C is that epoch's, batch-norm statistics included.
    early, _ = train_classifier(train, val, {**cfg, "epochs": report["selected_epoch"]}, DATA_CFG, seed=0,
                                device="cpu")
    assert_same_state(model, early)


def counted_optimiser_steps(run) -> int:
    steps = []
    handle = register_optimizer_step_post_hook(lambda *_: steps.append(1))
    try:
        run()
    finally:
        handle.remove()
    return len(steps)


@pytest.mark.parametrize("n, steps_per_epoch", [(7, 1), (12, 1), (16, 2)])
def test_an_epoch_is_the_whole_batches_of_the_training_set_at_least_one(n, steps_per_epoch):
    cfg = {**CLASSIFIER_CFG, "width": 0.25, "epochs": 2, "flips": False}
    steps = counted_optimiser_steps(lambda: train_classifier(brightness_set(n, seed=0), brightness_set(4, seed=1),
                                                             cfg, DATA_CFG, seed=0, device="cpu"))
    assert steps == 2 * steps_per_epoch


def test_each_epoch_shows_every_training_image_once_and_logs_its_mean_batch_loss():
    """What C saw in training mode, read by a forward hook: each epoch is a permutation of the set,
    and its logged loss is the mean of its batches' cross-entropies."""
    cfg = {**CLASSIFIER_CFG, "width": 0.25, "epochs": 2, "batch_size": 4, "flips": False}
    train = brightness_set(16, seed=0)
    batches = []

    def record(module, inputs, output):
        if isinstance(module, SimpleCNN) and module.training:
            batches.append((inputs[0].detach(), output.detach()))

    handle = register_module_forward_hook(record)
    try:
        _, report = train_classifier(train, brightness_set(4, seed=1), cfg, DATA_CFG, seed=0, device="cpu")
    finally:
        handle.remove()
    flat = train.images.flatten(1)
    orders = []
    for epoch in range(cfg["epochs"]):
        seen, losses = [], []
        for images, logits in batches[4 * epoch:4 * epoch + 4]:
            rows = [int((flat == image.flatten()).all(dim=1).nonzero()) for image in images]
            seen += rows
            losses.append(F.cross_entropy(logits, train.labels[rows]).item())
        assert sorted(seen) == list(range(16))
        assert report["history"][epoch]["train_loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-6)
        orders.append(seen)
    assert len(batches) == 8 and orders[0] != orders[1]


def test_the_classifier_is_trained_with_the_configured_betas():
    cfg = {**CLASSIFIER_CFG, "width": 0.25, "epochs": 1, "flips": False, "lr": 1e-2}
    train, val = brightness_set(16, seed=0), brightness_set(4, seed=1)
    slow, _ = train_classifier(train, val, {**cfg, "betas": [0.5, 0.999]}, DATA_CFG, seed=0, device="cpu")
    fast, _ = train_classifier(train, val, {**cfg, "betas": [0.9, 0.9]}, DATA_CFG, seed=0, device="cpu")
    assert any(not torch.equal(a, b) for a, b in zip(slow.parameters(), fast.parameters()))


def test_pretrained_weights_reach_the_classifier(tmp_path):
    cfg = {**CLASSIFIER_CFG, "arch": "vgg16", "width": 0.0625, "weights": str(tmp_path / "vgg16.pth")}
    with pytest.raises(ValueError, match="pretrained VGG16 weights need classifier width 1.0"):
        train_classifier(brightness_set(8, seed=0), brightness_set(4, seed=1), cfg, DATA_CFG, seed=0, device="cpu")


# ---------------------------------------------------------------------------------- GAN and resume

def fit(classifier, train, checkpoint, **overrides) -> GANTrainer:
    trainer = GANTrainer(classifier, {**GAN_CFG, **overrides}, DATA_CFG, seed=0, device="cpu")
    trainer.fit(train, checkpoint)
    return trainer


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    for name in state_a:
        assert torch.equal(state_a[name], state_b[name]), name


@pytest.fixture(scope="module")
def uninterrupted(frozen_classifier, phantoms, tmp_path_factory):
    checkpoint = tmp_path_factory.mktemp("run_a") / "checkpoint.pt"
    return fit(frozen_classifier, phantoms["train"], checkpoint), checkpoint


def test_gan_run_records_every_step_and_checkpoints_the_end(uninterrupted):
    trainer, checkpoint = uninterrupted
    assert trainer.step == GAN_CFG["steps"]
    assert [row[0] for row in trainer.losses] == list(range(1, GAN_CFG["steps"] + 1))
    assert all(len(row) == len(GANTrainer.LOSS_COLUMNS) for row in trainer.losses)
    state = torch.load(checkpoint, weights_only=True)
    assert state["step"] == GAN_CFG["steps"]
    assert state["losses"] == trainer.losses


def fit_until_killed(classifier, train, checkpoint, monkeypatch, **overrides) -> None:
    """A GAN run that dies right after saving its checkpoint at step KILL_AFTER."""
    original = GANTrainer.save_checkpoint

    def save_then_die(self, path):
        original(self, path)
        if self.step == KILL_AFTER:
            raise KeyboardInterrupt

    monkeypatch.setattr(GANTrainer, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        fit(classifier, train, checkpoint, **overrides)
    monkeypatch.undo()
    assert torch.load(checkpoint, weights_only=True)["step"] == KILL_AFTER


def test_each_checkpoint_logs_the_losses_of_its_own_step(frozen_classifier, phantoms, uninterrupted, tmp_path, caplog):
    reference, _ = uninterrupted
    with caplog.at_level(logging.INFO, logger="medxgan.train.gan"):
        fit(frozen_classifier, phantoms["train"], tmp_path / "checkpoint.pt")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    every = GAN_CFG["checkpoint_every"]
    assert [int(line.split(":")[0][5:]) for line in lines] == list(range(every, GAN_CFG["steps"] + 1, every))
    for line in lines:
        step, d_loss, g_adv = reference.losses[int(line.split(":")[0][5:]) - 1][:3]
        assert line.startswith(f"step {step}: D {d_loss:.3f}, G adv {g_adv:.3f}, ")


def test_a_killed_gan_run_resumes_exactly(frozen_classifier, phantoms, uninterrupted, tmp_path, monkeypatch, caplog):
    reference, _ = uninterrupted
    checkpoint = tmp_path / "b" / "checkpoint.pt"
    fit_until_killed(frozen_classifier, phantoms["train"], checkpoint, monkeypatch)

    with caplog.at_level(logging.INFO, logger="medxgan.train.gan"):
        resumed = fit(frozen_classifier, phantoms["train"], checkpoint)
    assert f"at step {KILL_AFTER}" in caplog.text
    assert len(resumed.losses) == GAN_CFG["steps"]
    assert resumed.losses == reference.losses  # the first 8 rows come from the checkpoint, the rest are re-run
    assert_same_state(resumed.G, reference.G)
    assert_same_state(resumed.D, reference.D)


def test_a_killed_gan_run_with_dropout_resumes_exactly(frozen_classifier, phantoms, tmp_path, monkeypatch):
    # D's dropout draws from torch's global RNG: a resumed run matches only if the checkpoint
    # restores that state too (the paper's setting is d_dropout 0.5).
    reference = fit(frozen_classifier, phantoms["train"], tmp_path / "a" / "checkpoint.pt", d_dropout=0.5)
    checkpoint = tmp_path / "b" / "checkpoint.pt"
    fit_until_killed(frozen_classifier, phantoms["train"], checkpoint, monkeypatch, d_dropout=0.5)
    torch.manual_seed(12345)  # whatever the process did in between must not matter
    resumed = fit(frozen_classifier, phantoms["train"], checkpoint, d_dropout=0.5)
    assert resumed.losses == reference.losses
    assert_same_state(resumed.G, reference.G)
    assert_same_state(resumed.D, reference.D)


def test_a_killed_gan_run_with_an_encoder_resumes_exactly(frozen_classifier, phantoms, tmp_path, monkeypatch):
    # The encoder trained beside G is part of the state: a checkpoint without it would resume G
    # against a fresh E.
    joint = {"reconstruction_weight": 5.0, "composition": "masked"}
    reference = fit(frozen_classifier, phantoms["train"], tmp_path / "a" / "checkpoint.pt", **joint)
    checkpoint = tmp_path / "b" / "checkpoint.pt"
    fit_until_killed(frozen_classifier, phantoms["train"], checkpoint, monkeypatch, **joint)
    resumed = fit(frozen_classifier, phantoms["train"], checkpoint, **joint)
    assert resumed.losses == reference.losses
    for network in ("G", "D", "E"):
        assert_same_state(getattr(resumed, network), getattr(reference, network))


def test_a_killed_gan_run_with_averaged_weights_resumes_exactly(frozen_classifier, phantoms, tmp_path, monkeypatch):
    # The average is part of the state: resumed from G's weights alone it would restart at the
    # checkpoint's G and keep none of the steps before.
    reference = fit(frozen_classifier, phantoms["train"], tmp_path / "a" / "checkpoint.pt", ema_decay=0.9)
    checkpoint = tmp_path / "b" / "checkpoint.pt"
    fit_until_killed(frozen_classifier, phantoms["train"], checkpoint, monkeypatch, ema_decay=0.9)
    resumed = fit(frozen_classifier, phantoms["train"], checkpoint, ema_decay=0.9)
    assert_same_state(resumed.G_average, reference.G_average)
    assert_same_state(resumed.generator(), reference.generator())


def test_a_killed_gan_run_with_the_lean_step_resumes_exactly(frozen_classifier, phantoms, tmp_path, monkeypatch):
    lean = {"composition": "masked", "mask_sparsity_weight": 0.5, "d_fakes": "shared", "lesion_rows": "positive"}
    reference = fit(frozen_classifier, phantoms["train"], tmp_path / "a" / "checkpoint.pt", **lean)
    checkpoint = tmp_path / "b" / "checkpoint.pt"
    fit_until_killed(frozen_classifier, phantoms["train"], checkpoint, monkeypatch, **lean)
    resumed = fit(frozen_classifier, phantoms["train"], checkpoint, **lean)
    assert resumed.losses == reference.losses
    assert_same_state(resumed.G, reference.G)
    assert_same_state(resumed.D, reference.D)


@pytest.mark.parametrize("d_fakes, g_passes", [("own", 2), ("shared", 1)])
def test_with_shared_fakes_d_judges_the_images_gs_step_then_improves(frozen_classifier, phantoms, d_fakes, g_passes):
    trainer = GANTrainer(frozen_classifier, {**GAN_CFG, "d_fakes": d_fakes}, DATA_CFG, seed=0, device="cpu")
    drawn, judged = [], []
    handles = [trainer.G.register_forward_hook(lambda module, inputs, output: drawn.append(output.detach())),
               trainer.D.register_forward_hook(lambda module, inputs, output: judged.append(inputs[0].detach()))]
    try:
        trainer.train_step(phantoms["train"].images[:8], phantoms["train"].labels[:8])
    finally:
        for handle in handles:
            handle.remove()
    assert len(drawn) == g_passes and len(judged) == 3  # D: real, fakes for its own step, G's images for G's
    assert torch.equal(judged[1], drawn[0]) and torch.equal(judged[2], drawn[-1])
    assert torch.equal(judged[1], judged[2]) == (d_fakes == "shared")


def test_the_averaged_g_is_the_moving_average_of_gs_weights_with_its_own_statistics(frozen_classifier, phantoms):
    trainer = GANTrainer(frozen_classifier, {**GAN_CFG, "ema_decay": 0.75}, DATA_CFG, seed=0, device="cpu")
    batch = phantoms["train"].images[:8], phantoms["train"].labels[:8]
    expected = {name: weight.clone() for name, weight in trainer.G.named_parameters()}
    for _ in range(3):
        trainer.train_step(*batch)
        expected = {name: 0.75 * expected[name] + 0.25 * weight.detach() for name, weight in trainer.G.named_parameters()}
    for name, average in trainer.G_average.named_parameters():
        torch.testing.assert_close(average, expected[name], rtol=1e-6, atol=1e-7)
    G = trainer.generator()
    assert not G.training and G is trainer.G_average
    live = dict(trainer.G.named_buffers())
    measured = {name: buffer for name, buffer in G.named_buffers() if name.endswith("running_mean")}
    assert measured and all(not torch.equal(buffer, live[name]) for name, buffer in measured.items())
    assert all(m.momentum == 0.1 for m in G.modules() if isinstance(m, nn.BatchNorm2d))  # restored after measuring
    assert trainer.generator().state_dict().keys() == trainer.G.state_dict().keys()  # saved as any G is


def test_without_averaging_the_trained_g_is_g_itself(uninterrupted):
    trainer, _ = uninterrupted
    assert trainer.G_average is None and trainer.generator() is trainer.G and not trainer.G.training


def test_negatives_reconstruct_from_z1_alone(frozen_classifier, phantoms):
    """With z2 held at 0 for negatives, their reconstruction error reaches E's z1 outputs and never
    its z2 outputs; a positive's reaches both."""
    cfg = {**GAN_CFG, "reconstruction_weight": 1.0, "composition": "masked"}
    trainer = GANTrainer(frozen_classifier, cfg, DATA_CFG, seed=0, device="cpu")
    as_wide_as_d = Encoder(cfg["nz1"], cfg["nz2"], SIZE, 1, cfg["d_width"])  # E is built on D's layers, at D's width
    assert [p.shape for p in trainer.E.parameters()] == [p.shape for p in as_wide_as_d.parameters()]
    train = phantoms["train"]
    for label in (0, 1):
        images = train.images[train.labels == label][:4]
        trainer.E.zero_grad()
        mse, _, _ = reconstruction_terms(trainer.G, trainer.E, trainer.C, images, torch.full((4,), label))
        mse.backward()
        z1_rows, z2_rows = trainer.E.head.weight.grad.split([cfg["nz1"], cfg["nz2"]])
        assert z1_rows.abs().sum() > 0
        assert (z2_rows.abs().sum() > 0) == (label == 1)


def test_a_finished_shorter_run_extends_exactly(frozen_classifier, phantoms, uninterrupted, tmp_path):
    reference, _ = uninterrupted
    checkpoint = tmp_path / "checkpoint.pt"
    short = fit(frozen_classifier, phantoms["train"], checkpoint, steps=KILL_AFTER)
    assert short.losses == reference.losses[:KILL_AFTER]
    extended = fit(frozen_classifier, phantoms["train"], checkpoint)
    assert extended.losses == reference.losses
    assert_same_state(extended.G, reference.G)


def test_a_checkpoint_with_other_settings_is_not_resumed(frozen_classifier, phantoms, uninterrupted, tmp_path, caplog):
    reference, _ = uninterrupted
    checkpoint = tmp_path / "checkpoint.pt"
    other = fit(frozen_classifier, phantoms["train"], checkpoint, steps=4, lambda_cls=2.0)
    assert torch.load(checkpoint, weights_only=True)["step"] == 4
    with caplog.at_level(logging.WARNING, logger="medxgan.train.gan"):  # the same step count, another lambda_cls
        fresh = fit(frozen_classifier, phantoms["train"], checkpoint, steps=4)
    assert "other settings" in caplog.text
    assert fresh.losses == reference.losses[:4]  # trained afresh, as the uninterrupted run began
    assert fresh.losses != other.losses  # lambda_cls changes the run: the comparison can tell them apart


def test_a_checkpoint_past_the_requested_steps_is_not_resumed(frozen_classifier, phantoms, uninterrupted, tmp_path):
    reference, finished = uninterrupted
    checkpoint = tmp_path / "checkpoint.pt"
    shutil.copy(finished, checkpoint)
    shorter = fit(frozen_classifier, phantoms["train"], checkpoint, steps=KILL_AFTER)
    assert shorter.losses == reference.losses[:KILL_AFTER]


# ---------------------------------------------------------------------------------- disentanglement

KEYS = {"samples", "positive_draws_per_sample", "negative_called_negative", "positive_called_positive"}


def reference_compose(G: nn.Module, cfg: dict, z1, z2):
    """G(z1, z2) and a masked G's mask; with lesion_rows "positive", L drawn by hand for the codes
    with z2 != 0 alone, in one batch, and no lesion elsewhere (where the mask is 0)."""
    if cfg["composition"] != "masked":
        return G(z1, z2), None
    if cfg["lesion_rows"] == "all":
        return G.compose(z1, z2)
    anatomy, rows = G.anatomy(z1, z2[:, :0]), z2.abs().sum(dim=1) > 0
    lesion = torch.zeros(len(z1), G.channels + 1, *anatomy.shape[2:])
    lesion[rows] = G.lesion(z1[rows], z2[rows])
    gate = torch.tanh(G.GATE_SCALE * z2.norm(dim=1) / G.nz2 ** 0.5)
    mask = (lesion[:, -1:] + 1) / 2 * gate[:, None, None, None]
    return (1 - mask) * anatomy + mask * lesion[:, :-1], mask


def reference_step(trainer: GANTrainer, real, labels, noise: torch.Generator):
    """One step of medXGAN's objective written out from the paper, on copies of the trainer's
    networks and Adam states at step 0: D on real vs G's fakes (uniform labels, z2 = 0 for
    negatives; with d_fakes "shared", G's own step's images and labels); then G on adversarial + lambda_cls * CE(C(G(z)), label) + proximity_weight *
    |G(z1, z2) - G(z1, 0)| + mask_sparsity_weight * mask area, over the positive codes; with an
    encoder E, G and E also on reconstruction_weight * MSE(G(E(x)), x), z2 = 0 for negatives, C's
    CE on the positives' reconstructions (positive) and their G(z1, 0) (negative), and their mask area."""
    cfg = trainer.cfg
    G, D, E = copy.deepcopy(trainer.G), copy.deepcopy(trainer.D), copy.deepcopy(trainer.E)
    learned = list(G.parameters()) + (list(E.parameters()) if E is not None else [])
    opt_g = torch.optim.Adam(learned, lr=cfg["lr"], betas=tuple(cfg["betas"]))
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg["lr"], betas=tuple(cfg["betas"]))
    positives, n = labels == 1, len(labels)

    def g_pass():
        z1, z2 = sample_codes(labels, cfg["nz1"], cfg["nz2"], noise)
        if cfg["proximity_weight"] > 0:  # G(z1, 0) of the positives, in the same forward pass
            z1, z2 = torch.cat([z1, z1[positives]]), torch.cat([z2, torch.zeros_like(z2[positives])])
        both, mask = reference_compose(G, cfg, z1, z2)
        return both[:n], both[n:], mask

    shared = cfg["d_fakes"] == "shared"
    if shared:  # D judges the very images G's step then improves
        fake, negative, mask = g_pass()
        d_fake_images, fake_labels = fake.detach(), labels
    else:
        fake_labels = torch.randint(0, 2, (len(labels),), generator=noise)
        z1, z2 = sample_codes(fake_labels, cfg["nz1"], cfg["nz2"], noise)
        with torch.no_grad():
            d_fake_images = G(z1, z2)
    d_real, d_fake = D(real, labels), D(d_fake_images, fake_labels)
    d_loss = (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
              + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
    opt_d.zero_grad()
    d_loss.backward()
    opt_d.step()
    if not shared:
        fake, negative, mask = g_pass()
    d_out = D(fake, labels)
    g_adv = F.binary_cross_entropy_with_logits(d_out, torch.ones_like(d_out))
    g_cls = F.cross_entropy(trainer.C(fake), labels)
    g_prox = (fake[positives] - negative).abs().mean() if len(negative) else torch.zeros(())
    g_mask = mask[:n][positives].mean() if mask is not None else torch.zeros(())
    g_loss = g_adv + cfg["lambda_cls"] * g_cls + cfg["proximity_weight"] * g_prox + cfg["mask_sparsity_weight"] * g_mask
    g_rec = torch.zeros(())
    if E is not None:
        e1, e2 = E(real)
        e2 = e2 * positives[:, None].float()
        k = int(positives.sum())
        out, rec_mask = G.compose(torch.cat([e1, e1[positives]]), torch.cat([e2, torch.zeros(k, cfg["nz2"])]))
        reconstruction, cleared = out[:n], out[n:]
        g_rec = ((reconstruction - real) ** 2).mean()
        rec_cls = F.cross_entropy(trainer.C(torch.cat([reconstruction[positives], cleared])),
                                  torch.tensor([1] * k + [0] * k))
        g_loss = (g_loss + cfg["reconstruction_weight"] * g_rec + cfg["lambda_cls"] * rec_cls
                  + cfg["mask_sparsity_weight"] * rec_mask[:n][positives].mean())
    opt_g.zero_grad()
    g_loss.backward()
    opt_g.step()
    row = [d_loss, g_adv, g_cls, g_prox, g_mask, g_rec, torch.sigmoid(d_real).mean(), torch.sigmoid(d_fake).mean()]
    return G, D, E, [1] + [value.item() for value in row]


@pytest.mark.parametrize("options", [
    # every term on, with weights that tell them apart; a projection D sees the labels
    {"discriminator": "projection", "composition": "masked", "lambda_cls": 2.0, "proximity_weight": 0.5,
     "mask_sparsity_weight": 0.3},
    {"discriminator": "unconditional", "composition": "plain", "lambda_cls": 3.0},  # the release's design
    # G and E trained together on real images as well (issue 25's lever 1)
    {"composition": "masked", "mask_sparsity_weight": 0.3, "reconstruction_weight": 5.0, "lambda_cls": 2.0},
    # one pass of G per step, L drawn for positive codes alone (the variant lean_step)
    {"composition": "masked", "mask_sparsity_weight": 0.3, "proximity_weight": 0.5, "d_fakes": "shared",
     "lesion_rows": "positive"},
], ids=["all-terms", "release", "reconstruction", "lean-step"])
def test_a_training_step_is_medxgans_objective(frozen_classifier, phantoms, options):
    cfg = {**GAN_CFG, **options, "lr": 1e-2}
    trainer = GANTrainer(frozen_classifier, cfg, DATA_CFG, seed=0, device="cpu")
    noise = torch.Generator()
    noise.set_state(trainer.noise.get_state())
    real, labels = phantoms["train"].images[:8], phantoms["train"].labels[:8]
    assert 0 < labels.sum() < 8
    G, D, E, row = reference_step(trainer, real, labels, noise)
    trainer.train_step(real, labels)
    trainer._log_losses()
    assert trainer.step == 1 and len(trainer.losses) == 1
    torch.testing.assert_close(torch.tensor(trainer.losses[0]), torch.tensor(row, dtype=torch.float32))
    assert (trainer.E is None) == (cfg.get("reconstruction_weight", 0) == 0)
    assert (row[GANTrainer.LOSS_COLUMNS.index("g_reconstruction")] > 0) == (trainer.E is not None)
    pairs = [(trainer.G, G), (trainer.D, D)] + ([(trainer.E, E)] if E is not None else [])
    for mine, reference in pairs:
        for (name, a), b in zip(mine.state_dict().items(), reference.state_dict().values()):
            torch.testing.assert_close(a, b, msg=name)


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_the_gan_step_runs_g_d_and_c_at_the_chosen_precision(frozen_classifier, phantoms, precision, dtype):
    trainer = GANTrainer(copy.deepcopy(frozen_classifier), GAN_CFG, DATA_CFG, seed=0, device="cpu", precision=precision)
    seen = []
    handles = [network.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
               for network in (trainer.G, trainer.D, trainer.C)]
    try:
        trainer.train_step(phantoms["train"].images[:8], phantoms["train"].labels[:8])
    finally:
        for handle in handles:
            handle.remove()
    assert len(seen) == 6 and set(seen) == {dtype}  # G twice, D three times, C once
    assert all(p.dtype == torch.float32 for p in trainer.G.parameters())  # the weights stay float32


@pytest.mark.parametrize("design", ["unconditional", "projection"])
def test_the_gan_starts_from_its_designs_initialisation_with_the_configured_optimisers(frozen_classifier, design):
    """G, and the release's unconditional D, start from DCGAN's N(0, 0.02) convolutions; the
    spectrally normalised projection D keeps PyTorch's own. Both Adams get the configured betas;
    every network is stored channels-last; C stays frozen."""
    cfg = {**GAN_CFG, "discriminator": design, "betas": [0.3, 0.9]}
    trainer = GANTrainer(copy.deepcopy(frozen_classifier), cfg, DATA_CFG, seed=0, device="cpu")

    def conv_std(network):
        weights = [m.weight for m in network.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
        return torch.cat([w.detach().flatten() for w in weights]).std().item()

    assert conv_std(trainer.G) == pytest.approx(0.02, rel=0.1)
    assert (conv_std(trainer.D) == pytest.approx(0.02, rel=0.1)) == (design == "unconditional")
    assert trainer.opt_g.defaults["betas"] == trainer.opt_d.defaults["betas"] == (0.3, 0.9)
    for network in (trainer.G, trainer.D, trainer.C):
        assert all(p.is_contiguous(memory_format=torch.channels_last) for p in network.parameters() if p.dim() == 4)
    trainer.train_step(torch.zeros(8, 1, SIZE, SIZE), torch.arange(8) % 2)
    assert all(not p.requires_grad and p.grad is None for p in trainer.C.parameters())


def test_the_specs_rebuild_the_trained_networks(frozen_classifier):
    cfg = {**GAN_CFG, "composition": "masked", "upsampling": "resize", "discriminator": "projection",
           "d_dropout": 0.25}
    trainer = GANTrainer(frozen_classifier, cfg, DATA_CFG, seed=0, device="cpu")
    assert trainer.g_spec["kind"] == "generator" and trainer.d_spec["kind"] == "discriminator"
    z1, z2 = torch.randn(2, cfg["nz1"]), torch.randn(2, cfg["nz2"])
    for network, spec in ((trainer.G, trainer.g_spec), (trainer.D, trainer.d_spec)):
        rebuilt = build_from_spec(spec)
        assert type(rebuilt) is type(network) and repr(rebuilt) == repr(network)
        rebuilt.load_state_dict(network.state_dict())
    rebuilt = build_from_spec(trainer.g_spec).eval()
    rebuilt.load_state_dict(trainer.G.state_dict())
    with torch.no_grad():  # trainer.G runs channels-last: the same function, other rounding
        torch.testing.assert_close(rebuilt(z1, z2), trainer.G.eval()(z1, z2))


def test_a_finished_run_is_resumed_not_trained_again(frozen_classifier, phantoms, uninterrupted, tmp_path, caplog):
    trainer, checkpoint = uninterrupted
    shutil.copy(checkpoint, tmp_path / "checkpoint.pt")
    with caplog.at_level(logging.INFO, logger="medxgan.train.gan"):
        steps = counted_optimiser_steps(lambda: fit(frozen_classifier, phantoms["train"], tmp_path / "checkpoint.pt"))
    assert steps == 0 and "resumed from" in caplog.text and "afresh" not in caplog.text


def test_a_checkpoint_is_read_without_unpickling_code(frozen_classifier, phantoms, tmp_path):
    """torch.load(weights_only=True): a checkpoint carrying a pickled callable is set aside unread."""
    marker = tmp_path / "code-ran"
    torch.save({"step": 0, "payload": PickledCode(marker)}, tmp_path / "checkpoint.pt")
    trainer = GANTrainer(frozen_classifier, GAN_CFG, DATA_CFG, seed=0, device="cpu")
    trainer.resume(tmp_path / "checkpoint.pt")
    assert not marker.exists() and (tmp_path / "checkpoint.pt.unreadable").exists() and trainer.step == 0


class PickledCode:
    """Unpickling this object would create a file: what a hostile checkpoint could do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_disentanglement_check_reports_shares(uninterrupted, frozen_classifier):
    trainer, _ = uninterrupted
    n = GAN_CFG["disentanglement_samples"]
    report = disentanglement_check(trainer.G, frozen_classifier, n, seed=0, device="cpu", draws=3)
    assert set(report) == KEYS
    assert report["samples"] == n and report["positive_draws_per_sample"] == 3
    assert 0 <= report["negative_called_negative"] <= 1
    assert 0 <= report["positive_called_positive"] <= 1
    chunked = disentanglement_check(trainer.G, frozen_classifier, n, seed=0, device="cpu", draws=3, batch_size=5)
    assert chunked == report


class CodeImage(nn.Module):
    """A stand-in generator whose image is a constant: |z2| summed, or z1's first entry."""

    def __init__(self, use_pathology: bool):
        super().__init__()
        self.nz1, self.nz2, self.use_pathology = 8, 4, use_pathology

    def forward(self, z1, z2):
        value = z2.abs().sum(1) if self.use_pathology else z1[:, 0]
        return value.view(-1, 1, 1, 1).expand(-1, 1, 4, 4)


class MeanAboveZero(nn.Module):
    """Positive iff the image's mean is clearly above zero."""

    def forward(self, x):
        score = x.mean(dim=(1, 2, 3)) - 1e-3
        return torch.stack([torch.zeros_like(score), score], dim=1)


def test_disentanglement_check_measures_what_it_says():
    # C reads the pathology code only: a perfect check.
    perfect = disentanglement_check(CodeImage(use_pathology=True), MeanAboveZero(), 50, seed=0, device="cpu")
    assert perfect["negative_called_negative"] == 1.0 and perfect["positive_called_positive"] == 1.0
    # C reads the anatomy code only: each z1 gets the same call with and without pathology, so the
    # two shares add up to one (and neither is trivial).
    leaky = disentanglement_check(CodeImage(use_pathology=False), MeanAboveZero(), 50, seed=0, device="cpu",
                                  batch_size=7)
    assert 0 < leaky["positive_called_positive"] < 1
    assert leaky["negative_called_negative"] + leaky["positive_called_positive"] == pytest.approx(1.0, abs=1e-6)


def test_disentanglement_check_leaves_a_real_generator_in_eval_mode(frozen_classifier):
    torch.manual_seed(0)
    generator = Generator(8, 4, SIZE, 1, width=0.0625)
    report = disentanglement_check(generator, frozen_classifier, 4, seed=1, device="cpu", draws=2)
    assert not generator.training
    assert set(report) == KEYS


def test_a_truncated_checkpoint_is_moved_aside_and_training_starts_afresh(frozen_classifier, phantoms, uninterrupted,
                                                                          tmp_path, caplog):
    reference, full = uninterrupted
    checkpoint = tmp_path / "checkpoint.pt"
    checkpoint.write_bytes(full.read_bytes()[:1000])  # a write cut short
    with caplog.at_level(logging.WARNING, logger="medxgan.train.gan"):
        fresh = fit(frozen_classifier, phantoms["train"], checkpoint)
    assert "cannot be read" in caplog.text and (tmp_path / "checkpoint.pt.unreadable").is_file()
    assert fresh.losses == reference.losses
    assert_same_state(fresh.G, reference.G)


# ---------------------------------------------------------------------------------- GAN: reconstruction terms

def test_reconstruction_terms_of_a_plain_generator_without_positives_are_the_mse_alone(frozen_classifier, phantoms):
    """With no positive in the batch there is nothing for C to call positive or cleared: its term
    is 0, not the NaN of an empty mean; a plain generator has no mask, so no mask area."""
    cfg = {**GAN_CFG, "reconstruction_weight": 1.0, "composition": "plain"}
    trainer = GANTrainer(frozen_classifier, cfg, DATA_CFG, seed=0, device="cpu")
    train = phantoms["train"]
    for labels in (torch.zeros(8, dtype=torch.long), train.labels[:8]):
        images = train.images[:8]
        mse, cls, mask = reconstruction_terms(trainer.G, trainer.E, trainer.C, images, labels)
        with torch.no_grad():
            z1, z2 = trainer.E(images)
            expected = F.mse_loss(trainer.G(z1, z2 * (labels == 1)[:, None]), images)
        torch.testing.assert_close(mse, expected)
        assert mask.item() == 0.0
        assert (cls.item() > 0) == bool(labels.any()) and torch.isfinite(cls)


def test_the_reconstruction_terms_run_at_the_chosen_precision(frozen_classifier, phantoms):
    # a plain G: its forward pass is the whole generator (a masked one composes outside forward)
    cfg = {**GAN_CFG, "reconstruction_weight": 1.0, "composition": "plain"}
    trainer = GANTrainer(copy.deepcopy(frozen_classifier), cfg, DATA_CFG, seed=0, device="cpu", precision="bf16")
    seen = {"G": [], "E": [], "C": []}
    handles = [getattr(trainer, name).register_forward_hook(
        lambda module, inputs, output, name=name: seen[name].append(
            (output[0] if isinstance(output, tuple) else output).dtype)) for name in seen]
    try:
        trainer.train_step(phantoms["train"].images[:8], phantoms["train"].labels[:8])
    finally:
        for handle in handles:
            handle.remove()
    assert {name: len(dtypes) for name, dtypes in seen.items()} == {"G": 3, "E": 1, "C": 2}
    assert {dtype for dtypes in seen.values() for dtype in dtypes} == {torch.bfloat16}
