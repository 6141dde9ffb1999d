"""Where an inversion step's time goes: each convolution of G and C timed alone, forward and backward
to its input, on the input it sees in a batched inversion, beside the machine's matmul limit.

    python benchmarks/layers.py --threads 1                 # release width (G 11.9 M parameters)
    python benchmarks/layers.py --threads 1 --width default # the default run's widths

benchmarks/speed.py gives the step as a whole; this splits it by layer, so a share of the limit
that falls short is traced to the layers that cause it. G's first transposed convolution, which
sees a 1x1 map, is timed both as the convolution kernel and as the matrix product G computes it as.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import yaml
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/speed.py
from speed import RELEASE, ROOT, default_widths, flops, matmul_limit, networks, rate  # noqa: E402

from medxgan import hardware  # noqa: E402
from medxgan.torch_utils import pick_device  # noqa: E402


def layer_inputs(G: nn.Module, C: nn.Module, batch: int, device: torch.device) -> list[tuple[str, nn.Module, torch.Tensor]]:
    """(name, convolution, the input it gets) for every convolution of G(z) and C(G(z))."""
    seen = []
    hooks = [module.register_forward_hook(lambda m, args, out, name=f"{net}.{name}": seen.append((name, m, args[0].detach())))
             for net, model in (("G", G), ("C", C)) for name, module in model.named_modules()
             if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d))]
    with torch.no_grad():
        C(G(torch.randn(batch, G.nz1, device=device), torch.randn(batch, G.nz2, device=device)))
    for hook in hooks:
        hook.remove()
    return seen


def timed(fn, x: torch.Tensor, precision: str, device: torch.device) -> tuple[float, float]:
    """Seconds per call and FLOPs of fn(x) and its backward to x."""
    x = x.clone().requires_grad_(True)

    def call():
        with hardware.autocast(device, precision):
            y = fn(x)
        y.float().sum().backward()

    return 1 / rate(call, 1, device), flops(call)


def as_matrix_product(conv: nn.ConvTranspose2d):
    """A transposed convolution of a 1x1 map: one matrix product, reshaped to the k x k output."""
    k = conv.kernel_size[0]

    def product(x: torch.Tensor) -> torch.Tensor:
        y = (x.flatten(1) @ conv.weight.flatten(1)).view(len(x), conv.out_channels, k, k)
        return y if conv.bias is None else y + conv.bias.view(1, -1, 1, 1)

    return product


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--width", choices=("release", "default"), default="release")
    parser.add_argument("--batch", type=int, default=128, help="images in the batched inversion (default 128)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    widths = {**RELEASE} if args.width == "release" else default_widths(config)
    G, C = networks(widths, device)
    hardware.channels_last(G, C)
    limits = {"fp32": matmul_limit(torch.float32, device), "bf16": matmul_limit(torch.bfloat16, device)}
    print(f"# {hardware.describe(device)}; {args.width} width, batch {args.batch}; matmul limit "
          f"fp32 {limits['fp32'] / 1e9:,.0f}, bf16 {limits['bf16'] / 1e9:,.0f} GFLOP/s")
    print("| layer | input | GFLOP, forward + backward | fp32 ms | fp32 share | bf16 ms | bf16 share |\n|---|---|---:|---:|---:|---:|---:|")
    with torch.no_grad():  # what G's first transposed convolution sees: its 1x1 projection of (z1, z2)
        first_input = G.project(torch.randn(args.batch, G.nz1 + G.nz2, device=device)).view(args.batch, G.c0, 1, 1)
    first = G.net[0]
    cases = [("G.net.0 as the transposed-convolution kernel", first, first_input),
             ("G.net.0 as a matrix product (what Generator.forward runs)", as_matrix_product(first), first_input),
             *layer_inputs(G, C, args.batch, device)]
    for name, fn, x in cases:
        cells = []
        for precision in ("fp32", "bf16"):
            seconds, count = timed(fn, x, precision, device)
            cells += [f"{1000 * seconds:,.1f}", f"{100 * count / seconds / limits[precision]:.0f}%"]
        print(f"| {name} | {tuple(x.shape)} | {count / 1e9:.2f} | {' | '.join(cells)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
