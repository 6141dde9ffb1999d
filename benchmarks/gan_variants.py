"""What a variant's generator costs to train: the GAN training step of each named setting, timed in
interleaved rounds so that the machine's drift falls on every variant alike.

    python benchmarks/gan_variants.py --threads 1 --variants defaults wide wide_anatomy_residual

`defaults` is the main run's GAN; any other name is an ablation variant of config/config.yaml, its
settings laid over `ablation.base` as the ablation trains it. The classifier has the shipped
config's size and random weights (its cost, not its verdicts, matters here); the images are random.
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
from speed import CHANNELS, ROOT, SIZE, default_widths, networks  # noqa: E402

from medxgan import hardware  # noqa: E402
from medxgan.config import step_settings, variant_settings  # noqa: E402
from medxgan.train.gan import GANTrainer  # noqa: E402

SECTIONS = ("data", "gan", "precision")


def settings_of(config: dict, variant: str) -> dict:
    dataset = next(iter(config["datasets"]))  # the built-in datasets share their GAN settings
    if variant == "defaults":
        return json.loads(step_settings(config, dataset, *SECTIONS))
    if variant not in config["ablation"]["variants"]:
        raise SystemExit(f"unknown variant {variant!r}: 'defaults' or one of {', '.join(config['ablation']['variants'])}")
    return json.loads(variant_settings(config, dataset, variant, 0, *SECTIONS))


def trainer_for(settings: dict, classifier: torch.nn.Module, device: torch.device) -> GANTrainer:
    precision = hardware.resolve_precision(settings["precision"], device)
    return GANTrainer(classifier, settings["gan"], settings["data"], 0, device, precision)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["defaults"], help="'defaults' and/or ablation variant names")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per variant and round (default 40)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--config", type=Path, default=ROOT / "config" / "config.yaml")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    config = yaml.safe_load(args.config.read_text())
    _, classifier = networks(default_widths(config), device)
    trainers = {name: trainer_for(settings_of(config, name), classifier, device) for name in args.variants}
    batches = {name: (torch.rand(t.cfg["batch_size"], CHANNELS, SIZE, SIZE) * 2 - 1,
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
    first = statistics.median(rates[args.variants[0]])
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
