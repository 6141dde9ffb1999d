"""What a variant's generator costs to train: the GAN training step of each named setting, timed in
interleaved rounds so that the machine's drift falls on every variant alike.

    python benchmarks/gan_variants.py --threads 1 --variants defaults wide wide_anatomy_residual
    python benchmarks/gan_variants.py --threads 1 --variants defaults --image-sizes 64 128

`defaults` is the main run's GAN; any other name is an ablation variant of config/config.yaml, its
settings laid over `ablation.base` as the ablation trains it. `--image-sizes` times each variant at
each of the generator's output sizes (default: the config's). The classifier has the shipped
config's width and random weights (its cost, not its verdicts, matters here); the images are random.
Precision is the run's (`precision: auto` resolves as a run does).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/speed.py
from speed import CHANNELS, ROOT, default_widths  # noqa: E402

from medxgan import hardware  # noqa: E402
from medxgan.config import step_settings, variant_settings  # noqa: E402
from medxgan.nets.networks import SimpleCNN  # noqa: E402
from medxgan.train.gan import GANTrainer  # noqa: E402

SECTIONS = ("data", "gan", "precision")


def settings_of(config: dict, variant: str) -> dict:
    dataset = next(iter(config["datasets"]))  # the built-in datasets share their GAN settings
    if variant == "defaults":
        return json.loads(step_settings(config, dataset, *SECTIONS))
    if variant not in config["ablation"]["variants"]:
        raise SystemExit(f"unknown variant {variant!r}: 'defaults' or one of {', '.join(config['ablation']['variants'])}")
    return json.loads(variant_settings(config, dataset, variant, 0, *SECTIONS))


def trainer_for(settings: dict, size: int, classifier_width: float, device: torch.device) -> GANTrainer:
    """The variant's GAN at `size` px, against a random classifier of the shipped width and that size."""
    precision = hardware.resolve_precision(settings["precision"], device)
    torch.manual_seed(0)
    classifier = SimpleCNN(size, CHANNELS, classifier_width).to(device).eval().requires_grad_(False)
    return GANTrainer(classifier, settings["gan"], {**settings["data"], "image_size": size}, 0, device, precision)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["defaults"], help="'defaults' and/or ablation variant names")
    parser.add_argument("--image-sizes", nargs="+", type=int, choices=(64, 128),
                        help="the generator's output sizes to time (default: the config's image_size)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per variant and round (default 40)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--config", type=Path, default=ROOT / "config" / "config.yaml")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    config = yaml.safe_load(args.config.read_text())
    sizes = args.image_sizes or [config["defaults"]["data"]["image_size"]]
    classifier_width = default_widths(config)["classifier_width"]
    trainers = {(name if len(sizes) == 1 else f"{name}, {size} px"):
                trainer_for(settings_of(config, name), size, classifier_width, device)
                for name in args.variants for size in sizes}
    batches = {name: (torch.rand(t.cfg["batch_size"], CHANNELS, t.G.image_size, t.G.image_size) * 2 - 1,
                      torch.arange(t.cfg["batch_size"]) % 2) for name, t in trainers.items()}
    for name, trainer in trainers.items():  # warm-up: first calls allocate and pick kernels
        trainer.train_step(*batches[name])
    rates = {name: [] for name in trainers}
    for _ in range(args.rounds):
        for name, trainer in trainers.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                trainer.train_step(*batches[name])
            rates[name].append(args.steps / (time.perf_counter() - start))
    first = statistics.median(next(iter(rates.values())))
    print(f"GAN training step, {hardware.cpu_model()}, {torch.get_num_threads()} torch threads, "
          f"{args.rounds} interleaved rounds of {args.steps} steps")
    print("| variant | precision | steps/s per round | median | time per step against the first |")
    print("|---|---|---|---:|---:|")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"| {name} | {trainers[name].precision} | {' / '.join(f'{v:.2f}' for v in values)} | {median:.2f} | "
              f"{first / median:.2f}x |")


if __name__ == "__main__":
    main()
