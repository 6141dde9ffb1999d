"""How differently this CPU's kernels round at another batch size: each kernel the workflow's results
depend on, run on N images at once and on each image alone, in float64, float32 and bf16.

    python benchmarks/rounding.py --threads 1
    python benchmarks/rounding.py --widths tiny --images 3 --steps 5    # seconds (tests/test_benchmarks.py)

In exact arithmetic every row is 0: each image's result is its own. On a real CPU oneDNN picks other
algorithms for other shapes, so float32 results differ in their last bits, and an inversion's Adam
steps amplify that (on an Intel Xeon with AMX the inversion row was 2.4e-7, on an AMD EPYC Zen 4
up to 4.9e-3 in the tests' models). The float64 rows are the floor the batch-invariance tests rely
on (they run G and C in float64): they must stay far below those tests' bounds on any CPU. Run this
on a new CPU to see its spread before the test suite does.

Each row: the largest |batched - alone| over the outputs, and that divided by the largest |output|.
Networks are randomly initialised with the config's default designs and widths.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Callable

import torch
import yaml
from torch import nn

from medxgan import hardware
from medxgan.inversion import invert
from medxgan.nets.networks import build_classifier, build_generator, positive_probability

ROOT = Path(__file__).resolve().parents[1]
SIZE, CHANNELS = 64, 1
TINY = {"width": 0.0625, "classifier_width": 0.25, "nz1": 8, "nz2": 4}
# name: the networks' dtype and the precision their forward passes run at
PRECISIONS = {"float64": (torch.float64, "fp32"), "float32": (torch.float32, "fp32"), "bf16": (torch.float32, "bf16")}


def networks(config: dict, widths: str, dtype: torch.dtype) -> tuple[nn.Module, nn.Module]:
    gan, classifier = config["defaults"]["gan"], config["defaults"]["classifier"]
    sizes = {"width": gan["width"], "classifier_width": classifier["width"], "nz1": gan["nz1"], "nz2": gan["nz2"]}
    sizes |= TINY if widths == "tiny" else {}
    torch.manual_seed(0)
    G = build_generator(gan["composition"], sizes["nz1"], sizes["nz2"], SIZE, CHANNELS, sizes["width"], gan["upsampling"])
    C = build_classifier(classifier["arch"], SIZE, CHANNELS, sizes["classifier_width"])
    return (network.to(dtype).eval().requires_grad_(False) for network in (G, C))


def spread(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *inputs: torch.Tensor) -> tuple[float, float]:
    """Largest |fn(all inputs) - fn(each row alone)|, absolute and relative to the largest |output|."""
    together = fn(*inputs).double()
    alone = torch.cat([fn(*(x[i:i + 1] for x in inputs)) for i in range(len(inputs[0]))]).double()
    largest = (together - alone).abs().max().item()
    return largest, largest / max(together.abs().max().item(), 1e-300)


def kernel_rows(G: nn.Module, C: nn.Module, precision: str, images: int, steps: int) -> dict[str, tuple[float, float]]:
    dtype = next(G.parameters()).dtype
    rng = torch.Generator().manual_seed(1)
    z1, z2 = (torch.randn(images, n, generator=rng).to(dtype) for n in (G.nz1, G.nz2))
    with torch.no_grad():
        x = G(z1, z2)
    device = x.device

    def generate(a, b):
        with torch.no_grad(), hardware.autocast(device, precision):
            return G(a, b).to(dtype)

    def probability(a):
        with torch.no_grad(), hardware.autocast(device, precision):
            return positive_probability(C, a).to(dtype)

    def input_gradient(a):
        a = a.clone().requires_grad_(True)
        with hardware.autocast(device, precision):
            p = positive_probability(C, a)
        return torch.autograd.grad(p.float().sum(), a)[0]

    cfg = {"init": "random", "restarts": 1, "steps": steps, "lr": 0.05, "mse_weight": 10.0, "local_weight": 0.0,
           "local_patches": [4, 8], "bce_weight": 1.0, "batch_size": images}
    rows = torch.arange(images)

    def inversion(a, r):
        result = invert(copy.deepcopy(G), copy.deepcopy(C), a, r, cfg, seed=0, precision=precision)
        return torch.cat([result.z1, result.z2], dim=1)

    return {"G(z1, z2)": spread(generate, z1, z2), "C's probability": spread(probability, x),
            "C's input gradient": spread(input_gradient, x),
            f"inversion codes after {steps} Adam steps": spread(inversion, x, rows)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--config", type=Path, default=ROOT / "config" / "config.yaml",
                        help="the config whose network designs and widths are measured")
    parser.add_argument("--widths", choices=("default", "tiny"), default="default",
                        help="the config's widths, or the tests' tiny networks")
    parser.add_argument("--images", type=int, default=8, help="images in the batch (default 8)")
    parser.add_argument("--steps", type=int, default=60, help="Adam steps of the inversion row (default 60)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = yaml.safe_load(args.config.read_text())
    print(f"# {hardware.describe(torch.device('cpu'))}; torch {torch.__version__}; "
          f"{args.images} images batched against alone, {args.widths} widths")
    print(f"{'kernel':<42} {'precision':<9} {'max |diff|':>11} {'relative':>11}")
    for name, (dtype, precision) in PRECISIONS.items():
        G, C = networks(config, args.widths, dtype)
        for kernel, (absolute, relative) in kernel_rows(G, C, precision, args.images, args.steps).items():
            print(f"{kernel:<42} {name:<9} {absolute:>11.2e} {relative:>11.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
