"""Torch helpers every layer shares: seeds, devices, frozen networks, batches and latent codes."""

from __future__ import annotations

import contextlib
import random
from typing import Iterator

import numpy as np
import torch
from torch import nn


def seed_everything(seed: int) -> None:
    """Seed every random source the pipeline uses (Python, NumPy, torch on CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(requested: str = "auto") -> torch.device:
    """CUDA when present (or asked for), CPU otherwise."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> torch.Tensor:
    """Indices of the batch used at `step`: epoch-wise permutations, the last partial batch dropped
    (a set smaller than one batch gives that one short batch)."""
    batches_per_epoch = max(1, n // batch_size)
    epoch, position = divmod(step, batches_per_epoch)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return order[position * batch_size:(position + 1) * batch_size]


def sample_codes(labels: torch.Tensor, nz1: int, nz2: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """z1 ~ N(0, I) for every image; z2 ~ N(0, I) for positives and exactly 0 for negatives."""
    z1 = torch.randn(len(labels), nz1, generator=generator)
    z2 = torch.randn(len(labels), nz2, generator=generator) * labels[:, None].float()
    return z1, z2


@contextlib.contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """Eval mode and no weight gradients inside the block; every flag is restored afterwards."""
    submodules = [m for module in modules for m in module.modules()]
    parameters = [p for module in modules for p in module.parameters()]
    modes = [m.training for m in submodules]
    grad_flags = [p.requires_grad for p in parameters]
    try:
        for m in submodules:
            m.training = False
        for p in parameters:
            p.requires_grad_(False)
        yield
    finally:
        for m, mode in zip(submodules, modes):
            m.training = mode
        for p, flag in zip(parameters, grad_flags):
            p.requires_grad_(flag)


def module_device(module: nn.Module) -> torch.device:
    """Device of the module's first parameter (CPU for a module without parameters)."""
    return next((p.device for p in module.parameters()), torch.device("cpu"))
