"""Speed of the heavy steps beside the machine's measured limit, in one run, on CPU or CUDA.

    python benchmarks/speed.py                 # every torch thread, the device `auto` picks
    python benchmarks/speed.py --threads 1 --out speed.csv
    python benchmarks/speed.py --quick         # seconds: tiny networks, short timings (tests/test_benchmarks.py)

Prints, for the default run's networks as the config designs them (G's composition and upsampling,
the encoder start of the inversion) and the release's (G 11.9 M parameters, random starts):
  - the matmul limit: GFLOP/s of a large square matrix product in fp32 and in bf16;
  - inversion: the release's per-image loop (one image, one start), then batched, then with
    channels-last weights, then in bf16 (the workflow's choice where bf16 is fast), in
    image-steps/s (one step = G forward, C forward, backward to the codes);
  - one inversion step eager and under torch.compile (default width), with the compile time;
  - one GAN training step (D update, then G update with the classifier term), as the release ran
    it (fp32), channels-last, and channels-last in bf16;
  - the lesion-branch tuning after the inversion, one image and batched (a masked G only);
  - one encoder training step (default design only);
  - each method of the config's explain.methods, images/s (fp32 and channels-last, as the workflow
    computes them);
and for each: FLOPs per item (torch.utils.flop_counter) and the share of the matching limit
reached. Networks are randomly initialised: speed does not depend on what they learnt.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from medxgan import hardware
from medxgan.nets.encoder import Encoder
from medxgan.train.encoder import encoder_losses
from medxgan.explainers import build_explainer
from medxgan.inversion import inversion_loss, invert_batch
from medxgan.nets.networks import MaskedGenerator, SimpleCNN, build_generator
from medxgan.train.gan import GANTrainer
from medxgan.tuning import tune_lesion_branch
from medxgan.torch_utils import pick_device

ROOT = Path(__file__).resolve().parents[1]
SIZE, CHANNELS = 64, 1
RELEASE = {"nz1": 1000, "nz2": 100, "width": 1.0, "d_width": 1.0, "classifier_width": 1.0,  # brain release
           "composition": "plain", "upsampling": "transposed", "init": "random"}
# --quick: tiny networks, batches and paths, so every case runs in seconds (its figures mean nothing)
QUICK = {"nz1": 8, "nz2": 4, "width": 0.0625, "d_width": 0.0625, "classifier_width": 0.25, "encoder_width": 0.0625}
QUICK_SETTINGS = {"gan": {"batch_size": 4}, "encoder": {"batch_size": 4},
                  "explain": {"interpolation_points": 2, "latent_ig_steps": 2, "ig_steps": 2,
                              "latent_shift_search_steps": 2, "latent_shift_frames": 2}}
EXPLAIN_BATCH = 8  # images per explanation call
MIN_SECONDS = 1.0  # each measurement repeats until it has run this long (after one warm-up)


@dataclass
class Row:
    case: str
    per_second: float
    unit: str
    flops_per_item: float
    precision: str

    def share(self, limits: dict[str, float]) -> float:
        return self.per_second * self.flops_per_item / limits[self.precision]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rate(fn, items: int, device: torch.device) -> float:
    """Items per second of `fn` (which handles `items` items per call): median of the calls made
    within MIN_SECONDS (at least one), after one warm-up call."""
    fn()
    sync(device)
    times, spent = [], 0.0
    while not times or spent < MIN_SECONDS:
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
        spent += times[-1]
    return items / statistics.median(times)


class _GlobalOnly:
    """What FlopCounterMode needs of its module tracker, without the module hooks, which break
    torch.autograd.grad on a leaf tensor (Latent IG's gradient): totals only, no per-module split."""
    parents = {"Global"}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def flops(fn) -> int:
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _GlobalOnly()
    with counter:
        fn()
    return counter.get_total_flops()


def matmul_limit(dtype: torch.dtype, device: torch.device) -> float:
    """FLOP/s of an n x n matrix product, n large enough to reach the hardware's peak."""
    n = 8192 if device.type == "cuda" else 256 if MIN_SECONDS == 0 else 2048
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    return rate(lambda: a @ b, 1, device) * 2 * n ** 3


def networks(widths: dict, device: torch.device):
    torch.manual_seed(0)
    G = build_generator(widths["composition"], widths["nz1"], widths["nz2"], SIZE, CHANNELS, widths["width"],
                        widths["upsampling"]).to(device).eval()
    C = SimpleCNN(SIZE, CHANNELS, widths["classifier_width"]).to(device).eval()
    return G.requires_grad_(False), C.requires_grad_(False)


def inversion_rows(name: str, widths: dict, inversion_cfg: dict, batch: int, device: torch.device) -> list[Row]:
    """The release's loop, then batching, the channels-last layout and bf16 added one at a time."""
    G, C = networks(widths, device)
    images = torch.rand(batch, CHANNELS, SIZE, SIZE) * 2 - 1
    steps = 5  # optimisation steps per timed call
    init = widths.get("init", inversion_cfg["init"])
    E = encoder(widths, device) if init == "encoder" else None

    def measured(case: str, n: int, precision: str) -> Row:
        cfg = {**inversion_cfg, "init": init, "steps": steps, "restarts": 1, "batch_size": n}
        per_second = rate(lambda: invert_batch(G, C, images[:n], torch.arange(n), cfg, seed=0, precision=precision,
                                               encoder=E), n * steps, device)
        return Row(f"{name}: inversion, {case}", per_second, "image-steps/s", step_flops(n), precision)

    def step_flops(n: int) -> float:
        z1 = torch.randn(n, G.nz1, device=device, requires_grad=True)
        z2 = torch.randn(n, G.nz2, device=device, requires_grad=True)
        target = images[:n].to(device)
        p = torch.full((n,), 0.9, device=device)
        return flops(lambda: inversion_loss(G, C, z1, z2, target, p, inversion_cfg).sum().backward()) / n

    start = "" if E is None else ", encoder start"
    rows = [measured(f"per-image loop (release){start}", 1, "fp32"), measured(f"batched {batch}{start}", batch, "fp32")]
    hardware.channels_last(G, C)
    return rows + [measured(f"batched {batch}{start}, channels-last", batch, "fp32"),
                   measured(f"batched {batch}{start}, channels-last, bf16", batch, "bf16")]


def tuning_rows(name: str, widths: dict, inversion_cfg: dict, batch: int, device: torch.device) -> list[Row]:
    """The lesion-branch tuning that follows the inversion (a masked G, inversion.tuning.steps > 0),
    as `tune_lesion_branch` runs it: each image's own copy of L's weights, fp32, Adam fused."""
    G, C = networks(widths, device)
    if not isinstance(G, MaskedGenerator) or inversion_cfg["tuning"]["steps"] == 0:
        return []
    images = torch.rand(batch, CHANNELS, SIZE, SIZE) * 2 - 1
    z1, z2 = torch.randn(batch, G.nz1), torch.randn(batch, G.nz2)
    steps = 2  # tuning steps per timed call

    def tune(n: int, step_count: int):
        return lambda: tune_lesion_branch(G, C, images[:n], z1[:n], z2[:n],
                                          {**inversion_cfg["tuning"], "steps": step_count})

    # counted on one image: the flop counter does not divide a batched (grouped) convolution by its groups
    step_flops = flops(tune(1, 1))
    return [Row(f"{name}: lesion-branch tuning, batched {n}", rate(tune(n, steps), n * steps, device),
                "image-steps/s", step_flops, "fp32") for n in (1, batch)]


def encoder(widths: dict, device: torch.device) -> Encoder:
    torch.manual_seed(0)
    return Encoder(widths["nz1"], widths["nz2"], SIZE, CHANNELS, widths["encoder_width"]).to(device).eval()


def encoder_rows(name: str, widths: dict, encoder_cfg: dict, device: torch.device) -> list[Row]:
    """One encoder training step (its code and image terms, backward, Adam) as `train_encoder` runs it
    (fp32), and channels-last in bf16, which it does not use: on a paired seed it lowered the results
    (docs/speed.md)."""
    real = (torch.rand(encoder_cfg["batch_size"], CHANNELS, SIZE, SIZE) * 2 - 1).to(device)
    labels = torch.arange(len(real)) % 2

    def row(case: str, precision: str, layout) -> Row:
        G, _ = networks(widths, device)
        E = encoder(widths, device).train()
        layout(G, E)
        optimizer = torch.optim.Adam(E.parameters(), lr=encoder_cfg["lr"])
        noise = torch.Generator().manual_seed(0)

        def step():
            with hardware.autocast(device, precision):
                code_loss, image_loss = encoder_losses(E, G, real, labels, noise)
            optimizer.zero_grad(set_to_none=True)
            (code_loss.float() + encoder_cfg["image_weight"] * image_loss.float()).backward()
            optimizer.step()

        return Row(f"{name}: encoder training step, batch {len(real)}{case}", rate(step, 1, device), "steps/s",
                   flops(step), precision)

    return [row("", "fp32", lambda *modules: None), row(", channels-last, bf16", "bf16", hardware.channels_last)]


def compiled_inversion_rows(name: str, widths: dict, inversion_cfg: dict, batch: int, device: torch.device) -> list[Row]:
    """One inversion step (objective and backward to the codes, no optimiser) eager and under
    torch.compile, channels-last and bf16 as the workflow runs it; the compile time is in the case."""
    G, C = networks(widths, device)
    hardware.channels_last(G, C)
    z1 = torch.randn(batch, G.nz1, device=device, requires_grad=True)
    z2 = torch.randn(batch, G.nz2, device=device, requires_grad=True)
    images = (torch.rand(batch, CHANNELS, SIZE, SIZE) * 2 - 1).to(device)
    p = torch.full((batch,), 0.9, device=device)

    def step(loss_fn):
        return lambda: loss_fn(G, C, z1, z2, images, p, inversion_cfg, "bf16").sum().backward()

    step_flops = flops(step(inversion_loss)) / batch
    rows = [Row(f"{name}: inversion step only, batched {batch}, channels-last, bf16", rate(step(inversion_loss), batch, device),
                "image-steps/s", step_flops, "bf16")]
    try:
        compiled = torch.compile(inversion_loss)
        start = time.perf_counter()
        step(compiled)()
        compile_seconds = time.perf_counter() - start
    except Exception as error:  # no C++ compiler, unsupported platform: say so, keep the other rows
        print(f"torch.compile unavailable here: {type(error).__name__}: {error}", file=sys.stderr)
        return rows
    rows.append(Row(f"{name}: inversion step only, same, torch.compile ({compile_seconds:.0f} s to compile)",
                    rate(step(compiled), batch, device), "image-steps/s", step_flops, "bf16"))
    return rows


def gan_rows(name: str, widths: dict, gan_cfg: dict, device: torch.device) -> list[Row]:
    """One D + G update as the release ran it (fp32, NCHW), then as the workflow runs it."""
    _, C = networks(widths, device)
    cfg = {**gan_cfg, **{k: widths[k] for k in ("nz1", "nz2", "width", "d_width", "composition", "upsampling")}}
    real = torch.rand(cfg["batch_size"], CHANNELS, SIZE, SIZE) * 2 - 1
    labels = torch.arange(cfg["batch_size"]) % 2
    rows = []
    for case, layout, precision in (("", "nchw", "fp32"), (", channels-last", "cl", "fp32"),
                                    (", channels-last, bf16", "cl", "bf16")):
        trainer = GANTrainer(copy.deepcopy(C), cfg, {"image_size": SIZE, "channels": CHANNELS}, 0, device, precision)
        if layout == "nchw":  # the trainer stores its networks channels-last; undo that for the release's case
            for network in (trainer.G, trainer.D, trainer.C):
                network.to(memory_format=torch.contiguous_format)
        step_flops = flops(lambda: trainer.train_step(real, labels))
        rows.append(Row(f"{name}: GAN training step, batch {cfg['batch_size']}{case}",
                        rate(lambda: trainer.train_step(real, labels), 1, device), "steps/s", step_flops, precision))
    return rows


def explanation_rows(name: str, widths: dict, explain_cfg: dict, batch: int, device: torch.device) -> list[Row]:
    G, C = networks(widths, device)
    hardware.channels_last(G, C)  # as `load_model` gives them to the explain step
    images = torch.rand(batch, CHANNELS, SIZE, SIZE) * 2 - 1
    codes = (torch.randn(batch, G.nz1), torch.randn(batch, G.nz2))
    rows = []
    for method in explain_cfg["methods"]:
        explainer = build_explainer(method, C, G, {**explain_cfg, "batch_size": batch})

        def explain():
            return explainer.attribute(images, target=1, latents=codes)

        rows.append(Row(f"{name}: explain, {method}", rate(explain, batch, device), "images/s", flops(explain) / batch,
                        "fp32"))
    return rows


def default_widths(config: dict) -> dict:
    """The default run's network sizes and designs."""
    gan = config["defaults"]["gan"]
    return {"nz1": gan["nz1"], "nz2": gan["nz2"], "width": gan["width"], "d_width": gan["d_width"],
            "classifier_width": config["defaults"]["classifier"]["width"],
            "encoder_width": config["defaults"]["encoder"]["width"], "composition": gan["composition"],
            "upsampling": gan["upsampling"]}


def print_table(rows: list[Row], limits: dict[str, float]) -> None:
    print(f"| case | throughput | GFLOP per item | GFLOP/s | share of the {'/'.join(limits)} matmul limit |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row.case} | {row.per_second:,.1f} {row.unit} | {row.flops_per_item / 1e9:.3f} "
              f"| {row.per_second * row.flops_per_item / 1e9:,.1f} | {100 * row.share(limits):.0f}% |")


def print_targets(rows: dict[str, Row], limits: dict[str, float], batch: int, designs: list[str]) -> None:
    """The speed goals of the project for the designs measured, each with the measured figure."""
    # the default design's rows also name its encoder start
    rows = {case.replace(", encoder start", ""): row for case, row in rows.items()}

    def inversion(name: str, case: str) -> Row:
        return rows[f"{name}: inversion, {case}"]

    def speed_up(name: str) -> float:
        return (inversion(name, f"batched {batch}, channels-last, bf16").per_second
                / inversion(name, "per-image loop (release)").per_second)

    goals = [(f"batched bf16 inversion vs the per-image fp32 loop, {name}", speed_up(name), target, "x")
             for name, target in (("default width", 3.0), ("release width", 4.0)) if name in designs]
    if "release width" in designs:
        goals += [("batched fp32 inversion, release width, share of the fp32 limit",
                   inversion("release width", f"batched {batch}, channels-last").share(limits), 0.75, "%"),
                  ("batched bf16 inversion, release width, share of the bf16 limit",
                   inversion("release width", f"batched {batch}, channels-last, bf16").share(limits), 0.40, "%")]
    # A CPU whose bf16 matmul is no faster than fp32 emulates bf16: its bf16 goals do not apply there.
    bf16_applies = limits.get("bf16", 0.0) > limits.get("fp32", 0.0)
    print("\n| goal | measured | target | met |\n|---|---:|---:|---|")
    for text, value, target, unit in goals:
        shown = (f"{value:.1f}x", f"{target:.0f}x") if unit == "x" else (f"{100 * value:.0f}%", f"{100 * target:.0f}%")
        met = "yes" if value >= target else "no"
        if "bf16" in text and not bf16_applies:
            met = "does not apply: bf16 matmul is no faster than fp32 on this CPU"
        print(f"| {text} | {shown[0]} | {shown[1]} | {met} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--config", type=Path, default=ROOT / "config" / "config.yaml",
                        help="the config whose default widths and settings are measured")
    parser.add_argument("--batch", type=int, default=128, help="images per batched inversion call (default 128)")
    parser.add_argument("--out", type=Path, help="also write the rows as CSV")
    parser.add_argument("--quick", action="store_true",
                        help="tiny networks, the default design only, short timings: checks that every case runs")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        global MIN_SECONDS
        MIN_SECONDS = 0.0  # one timed call per case
    device = pick_device(args.device)
    hardware.allow_tf32(device)
    config = yaml.safe_load(args.config.read_text())
    defaults = config["defaults"]
    if args.quick:
        defaults = {**defaults, **{section: {**defaults[section], **quick} for section, quick in QUICK_SETTINGS.items()}}
    print(f"# {hardware.describe(device)}; torch {torch.__version__}; Python {sys.version.split()[0]}")
    limits = {"fp32": matmul_limit(torch.float32, device), "bf16": matmul_limit(torch.bfloat16, device)}
    print(f"matmul limit: fp32 {limits['fp32'] / 1e9:,.0f} GFLOP/s, bf16 {limits['bf16'] / 1e9:,.0f} GFLOP/s"
          + f"; `precision: auto` picks {hardware.resolve_precision('auto', device)} here\n")
    designs = [("default width", default_widths(config) | (QUICK if args.quick else {}))]
    designs += [] if args.quick else [("release width", default_widths(config) | RELEASE)]
    rows = []
    for name, widths in designs:
        rows += inversion_rows(name, widths, defaults["inversion"], args.batch, device)
        rows += tuning_rows(name, widths, defaults["inversion"], args.batch, device)
        if name == "default width" and not args.quick:
            rows += compiled_inversion_rows(name, widths, defaults["inversion"], args.batch, device)
        rows += gan_rows(name, widths, defaults["gan"], device)
        if name == "default width":
            rows += encoder_rows(name, widths, defaults["encoder"], device)
        rows += explanation_rows(name, widths, defaults["explain"], EXPLAIN_BATCH, device)
        print(f"({name} measured)", file=sys.stderr)
    print_table(rows, limits)
    print_targets({row.case: row for row in rows}, limits, args.batch, [name for name, _ in designs])
    if args.out:
        import pandas as pd

        pd.DataFrame([{**vars(row), "share_of_limit": row.share(limits), "hardware": hardware.describe(device)}
                      for row in rows]).to_csv(args.out, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
