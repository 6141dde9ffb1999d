"""The machine a step runs on: what it is, which number formats it computes fast, and the
precision and thread count a step uses there.

`precision: auto` picks bfloat16 autocast where the hardware has fast bf16 arithmetic (CPUs with
AVX512-BF16 or AMX, CUDA GPUs that support bf16) and float32 elsewhere; the choice is logged and
recorded with the results. Under bf16 only the networks' forward passes run in bf16: losses,
optimiser state, stored images and metrics stay float32.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import platform
from pathlib import Path

import torch

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16")
# CPU flags (as /proc/cpuinfo names them) that give bf16 matrix arithmetic its own instructions
FAST_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def _cpuinfo(key: str) -> str | None:
    """The first value of `key` in /proc/cpuinfo (None where there is no such file, e.g. macOS)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return None
    for line in cpuinfo.read_text().splitlines():
        if line.split(":", 1)[0].strip() == key:
            return line.split(":", 1)[1].strip()
    return None


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags ('flags' on x86, 'Features' on ARM); empty where they are unknown."""
    return frozenset((_cpuinfo("flags") or _cpuinfo("Features") or "").split())


def cpu_model() -> str:
    """The CPU's model name, e.g. 'Intel(R) Xeon(R) Platinum 8480+'."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_bf16_features() -> list[str]:
    """The fast-bf16 features this CPU has, from the flags or, where those are missing, from torch."""
    found = [flag for flag in FAST_BF16_CPU_FLAGS if flag in cpu_flags()]
    if not cpu_flags():  # no /proc/cpuinfo: ask torch's own detection
        checks = {"avx512_bf16": "_is_avx512_bf16_supported", "amx_bf16": "_is_amx_tile_supported"}
        found = [flag for flag, name in checks.items() if getattr(torch.cpu, name, lambda: False)()]
    return found


def has_fast_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(cpu_bf16_features())
    return False


def describe(device: torch.device) -> str:
    """One line naming the hardware, for logs, benchmark output and provenance."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    features = ", ".join(cpu_bf16_features()) or "no fast bf16"
    return f"{cpu_model()} ({features}), {torch.get_num_threads()} torch threads"


def resolve_precision(requested: str, device: torch.device) -> str:
    """'fp32' or 'bf16' for a requested 'auto', 'fp32' or 'bf16', logged."""
    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r} (expected one of {', '.join(PRECISIONS)})")
    if requested == "auto":
        chosen = "bf16" if has_fast_bf16(device) else "fp32"
        log.info("precision auto: %s on %s", chosen, describe(device))
        return chosen
    if requested == "bf16" and not has_fast_bf16(device):
        log.warning("precision bf16 on %s, which has no fast bf16 arithmetic: expect it to be slower than fp32",
                    describe(device))
    return requested


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast for the networks' forward passes under 'bf16'; nothing changes under 'fp32'."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def allow_tf32(device: torch.device) -> None:
    """TF32 matrix products on CUDA: float32's range with about bf16's rounding error, well below
    the GAN's own noise, at several times float32's speed."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def channels_last(*modules: torch.nn.Module) -> None:
    """Store convolution weights channels-last, the layout oneDNN's and cuDNN's fastest
    convolutions use (benchmarks/speed.py measures the gain); results are unchanged up to rounding."""
    for module in modules:
        module.to(memory_format=torch.channels_last)
