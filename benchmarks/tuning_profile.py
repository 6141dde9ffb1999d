"""Where a lesion-branch tuning step's time goes: torch.profiler over a few steps of
`medxgan.tuning.tune_lesion_branch`, the operators by their own time, with the shapes they ran on.

    python benchmarks/tuning_profile.py --threads 1              # the default run: 100 test positives
    python benchmarks/tuning_profile.py --threads 1 --images 32  # the check step's noisy copies

The networks have the shipped config's sizes and the layout a run loads them in (channels-last);
their weights are random, which changes no operator's cost. benchmarks/speed.py gives the step's
throughput beside the machine's limit; this splits it by operator, so a slow step is traced to the
layers that cause it (e.g. a convolution that vmap runs as one group per image).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import yaml
from torch.profiler import profile

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/speed.py
from speed import CHANNELS, ROOT, SIZE, default_widths, networks, rate  # noqa: E402

from medxgan.hardware import channels_last  # noqa: E402
from medxgan.tuning import tune_lesion_branch  # noqa: E402


def profiled_steps(images: int, steps: int) -> tuple[list, float]:
    """The profiler's operator averages (grouped by input shape) over `steps` tuning steps, and the
    wall-clock seconds per step outside the profiler (speed.rate's median, after a warm-up call)."""
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    G, C = networks(default_widths(config), torch.device("cpu"))
    channels_last(G, C)
    tuning = config["defaults"]["inversion"]["tuning"]
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(images, CHANNELS, SIZE, SIZE, generator=generator) * 2 - 1
    z1, z2 = torch.randn(images, G.nz1, generator=generator), torch.randn(images, G.nz2, generator=generator)

    def tune():
        tune_lesion_branch(G, C, x, z1, z2, {**tuning, "steps": steps})

    seconds = 1 / rate(tune, steps, torch.device("cpu"))
    with profile(record_shapes=True) as prof:
        tune()
    return prof.key_averages(group_by_input_shape=True), seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a run's job gets one per core share)")
    parser.add_argument("--images", type=int, default=100, help="images tuned together (default: 100)")
    parser.add_argument("--steps", type=int, default=5, help="tuning steps timed and profiled (default: 5)")
    parser.add_argument("--top", type=int, default=15, help="operators listed (default: 15)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    averages, seconds = profiled_steps(args.images, args.steps)
    total = sum(event.self_cpu_time_total for event in averages)
    print(f"lesion-branch tuning, {args.images} images, {args.threads} thread(s): {1000 * seconds:.0f} ms per step "
          f"({total / 1000 / args.steps:.0f} ms under the profiler)")
    print("| operator | ms per step | share | calls per step | input shapes |")
    print("|---|---:|---:|---:|---|")
    for event in sorted(averages, key=lambda e: -e.self_cpu_time_total)[:args.top]:
        shapes = ", ".join(str(list(shape)) for shape in event.input_shapes if shape)
        print(f"| {event.key} | {event.self_cpu_time_total / 1000 / args.steps:.1f} "
              f"| {100 * event.self_cpu_time_total / total:.0f}% | {event.count / args.steps:g} | {shapes} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
