"""Precision and threads: what `auto` picks, what bf16 changes and what it must not."""

import copy
import subprocess
import sys

import pytest
import torch
from helpers import TUNING_OFF, calibrate_gan_pair

from medxgan import hardware
from medxgan.evaluate.metrics import pointing_game
from medxgan.explainers import DifferenceMap
from medxgan.inversion import invert
from medxgan.nets.networks import Generator, SimpleCNN, positive_probability
from medxgan.train.gan import GANTrainer

NZ1, NZ2, SIZE = 8, 4, 64
CFG = {"init": "random", "restarts": 2, "steps": 40, "lr": 0.05, "mse_weight": 10.0,
       "local_weight": 0.0, "local_patches": [4, 8], "bce_weight": 1.0, "batch_size": 8, "tuning": TUNING_OFF}
CPU = torch.device("cpu")


@pytest.fixture
def probe(monkeypatch, tmp_path):
    """The probe's cache in a fresh folder, and its measurement replaced by given rates (counted)."""
    monkeypatch.setenv("MEDXGAN_CACHE_DIR", str(tmp_path))
    calls = []

    def measured(rates):
        monkeypatch.setattr(hardware, "measure_cpu_precisions", lambda: calls.append(rates) or dict(rates))
        return calls
    return measured


@pytest.mark.parametrize("bf16_rate, chosen", [(5.0, "fp32"), (11.0, "fp32"), (12.0, "bf16"), (30.0, "bf16")])
def test_auto_picks_bf16_only_where_it_is_measured_faster(probe, bf16_rate, chosen, caplog):
    probe({"fp32": 10.0, "bf16": bf16_rate})  # 1.15x is the least gain that counts
    with caplog.at_level("INFO", logger="medxgan.hardware"):
        assert hardware.resolve_precision("auto", CPU) == chosen
    assert f"precision auto: {chosen}" in caplog.text  # the choice is logged, with both figures
    assert f"fp32 10.0, bf16 {bf16_rate:.1f} steps/s" in caplog.text


def test_the_first_decision_is_kept_so_every_job_agrees(probe):
    calls = probe({"fp32": 10.0, "bf16": 30.0})
    assert hardware.resolve_precision("auto", CPU) == "bf16"
    probe({"fp32": 30.0, "bf16": 10.0})  # a later measurement would decide otherwise
    assert hardware.resolve_precision("auto", CPU) == "bf16"
    assert len(calls) == 1  # ... but the cached decision is read, not measured again


def test_an_explicit_precision_is_kept_and_a_slow_bf16_is_warned_about(probe, caplog):
    calls = probe({"fp32": 10.0, "bf16": 8.0})
    assert hardware.resolve_precision("fp32", CPU) == "fp32"
    assert not calls  # fp32 needs no probe
    with caplog.at_level("WARNING", logger="medxgan.hardware"):
        assert hardware.resolve_precision("bf16", CPU) == "bf16"
    assert "measured no faster than fp32" in caplog.text
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        hardware.resolve_precision("fp16", CPU)


def test_an_unwritable_cache_still_decides(probe, tmp_path, monkeypatch, caplog):
    probe({"fp32": 10.0, "bf16": 30.0})
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("MEDXGAN_CACHE_DIR", str(blocker / "cache"))  # a folder under a file cannot be made
    with caplog.at_level("WARNING", logger="medxgan.hardware"):
        assert hardware.resolve_precision("auto", CPU) == "bf16"
    assert "cannot keep the precision probe's decision" in caplog.text


def test_the_probe_times_both_precisions_on_this_cpu():
    rates = hardware.measure_cpu_precisions(seconds=0.05)
    assert set(rates) == {"fp32", "bf16"} and all(rate > 0 for rate in rates.values())


def test_the_detected_cpu_is_named():
    assert hardware.cpu_model()
    assert set(hardware.cpu_bf16_features()) <= set(hardware.FAST_BF16_CPU_FLAGS)
    assert hardware.cpu_model() in hardware.describe(CPU)


def test_autocast_switches_the_forward_pass_only_under_bf16():
    layer = torch.nn.Linear(4, 2)
    x = torch.randn(3, 4)
    with hardware.autocast(CPU, "bf16"):
        assert layer(x).dtype == torch.bfloat16
    with hardware.autocast(CPU, "fp32"):
        assert layer(x).dtype == torch.float32
    assert layer.weight.dtype == torch.float32


@pytest.fixture(scope="module")
def gan_pair():
    torch.manual_seed(0)
    generator, classifier = Generator(NZ1, NZ2, SIZE, channels=1, width=0.0625), SimpleCNN(SIZE, 1, width=0.25)
    calibrate_gan_pair(generator, classifier)
    return generator.requires_grad_(False), classifier.requires_grad_(False)


def test_bf16_and_fp32_inversions_agree_on_decisions_and_localisation(gan_pair):
    """Positives drawn by G with a pathology code: bf16 search and fp32 search must reconstruct them
    as well, be called the same by C, and give difference maps that peak in the same places."""
    generator, classifier = gan_pair
    rng = torch.Generator().manual_seed(4)
    z1, z2 = torch.randn(16, NZ1, generator=rng), 3 * torch.randn(16, NZ2, generator=rng)
    with torch.no_grad():
        images = generator(z1, z2)
        change = (images - generator(z1, torch.zeros_like(z2))).abs()[:, 0]
    masks = change >= change.flatten(1).quantile(0.9, dim=1)[:, None, None]  # where z2 changes the image most
    rows = torch.arange(16)
    results = {p: invert(copy.deepcopy(generator), classifier, images, rows, CFG, seed=0, precision=p)
               for p in ("fp32", "bf16")}
    fp32, bf16 = results["fp32"], results["bf16"]
    assert not torch.equal(fp32.z1, bf16.z1)  # bf16 did run: the searches took other paths
    with torch.no_grad():
        calls = {p: positive_probability(classifier, generator(r.z1, r.z2)) >= 0.5 for p, r in results.items()}
    assert (calls["fp32"] == calls["bf16"]).float().mean() >= 0.9
    assert abs(bf16.loss.mean() - fp32.loss.mean()) <= 0.1 * fp32.loss.mean() + 1e-3
    explainer = DifferenceMap(classifier, generator)
    hits = {p: pointing_game(explainer.attribute(images, latents=(r.z1, r.z2)), masks).float().mean()
            for p, r in results.items()}
    assert abs(hits["fp32"] - hits["bf16"]) <= 0.15


def test_bf16_gan_step_keeps_weights_and_optimiser_state_in_fp32(gan_pair):
    _, classifier = gan_pair
    cfg = {"nz1": NZ1, "nz2": NZ2, "lambda_cls": 1.0, "width": 0.0625, "d_width": 0.0625, "d_dropout": 0.0,
           "steps": 2, "batch_size": 4, "lr": 2e-4, "betas": [0.5, 0.999], "checkpoint_every": 1,
           "upsampling": "transposed", "discriminator": "unconditional", "proximity_weight": 0.0,
           "reconstruction_weight": 0.0,
           "composition": "plain", "mask_sparsity_weight": 0.0, "ema_decay": 0.0, "d_fakes": "own", "lesion_rows": "all"}
    trainer = GANTrainer(copy.deepcopy(classifier), cfg, {"image_size": SIZE, "channels": 1}, 0, CPU, "bf16")
    before = copy.deepcopy(trainer.G.state_dict())
    trainer.train_step(torch.rand(4, 1, SIZE, SIZE) * 2 - 1, torch.tensor([0, 1, 0, 1]))
    assert all(p.dtype == torch.float32 for p in [*trainer.G.parameters(), *trainer.D.parameters()])
    assert all(v.dtype == torch.float32 for s in trainer.opt_g.state.values() for v in s.values() if v.is_floating_point())
    assert any(not torch.equal(before[k], v) for k, v in trainer.G.state_dict().items())  # G learnt
    trainer._log_losses()
    assert len(trainer.losses) == 1 and all(isinstance(v, float) for v in trainer.losses[0][1:])


def test_inversion_depends_on_the_thread_count_only_by_rounding(gan_pair):
    generator, classifier = gan_pair
    with torch.no_grad():
        images = generator(torch.randn(6, NZ1), torch.randn(6, NZ2))
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(invert(generator, classifier, images, torch.arange(6), CFG, seed=0))
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(results[0].loss, results[1].loss, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(results[0].z1, results[1].z1, rtol=1e-2, atol=1e-3)


def test_help_loads_neither_torch_nor_the_plotting_stack():
    code = ("import sys\nfrom medxgan.pipeline.cli import build_parser\nbuild_parser()\n"
            "print(sorted(m for m in ('torch', 'matplotlib', 'captum', 'pandas') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
