"""The machine a step runs on: what it is, which number formats it computes fast, and the
precision and thread count a step uses there.

`precision: auto` picks bfloat16 autocast where it is measured to be faster. On a CPU a short probe
times the same small convolutional training step in both formats (a CPU flag such as AVX512-BF16
says bf16 instructions exist, not that the step is faster with them: on an AMD EPYC with
AVX512-BF16 the GAN step gained 1.3x, where an AMX Xeon gains far more). The decision is cached per
CPU model, thread count and torch version, so every later step and run on that machine makes the
same choice, and it is logged with both figures. CUDA GPUs that support bf16 use it. Under bf16
only the networks' forward passes run in bf16: losses, optimiser state, stored images and metrics
stay float32.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import platform
import time
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
    """Whether bf16 is faster here: a CUDA GPU that supports it, or a CPU where the probe measured it."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return probed_cpu_precision()["precision"] == "bf16"
    return False


def describe(device: torch.device) -> str:
    """One line naming the hardware, for logs, benchmark output and provenance."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    features = ", ".join(cpu_bf16_features()) or "no fast bf16"
    return f"{cpu_model()} ({features}), {torch.get_num_threads()} torch threads"


# bf16 is chosen only when the probe finds it at least this much faster: near a tie the rounding
# cost is not worth it, and timing noise must not flip the choice.
BF16_MIN_SPEEDUP = 1.15
PROBE_SECONDS = 0.5  # per precision, after one warm-up step


def _probe_step(precision: str) -> callable:
    """One training step of a small convolutional network (the GAN's layer sizes: 64 px images,
    16-64 channels, batch 32, channels-last), as a closure."""
    net = torch.nn.Sequential(
        torch.nn.Conv2d(16, 32, 4, 2, 1), torch.nn.BatchNorm2d(32), torch.nn.LeakyReLU(0.2),
        torch.nn.Conv2d(32, 64, 4, 2, 1), torch.nn.BatchNorm2d(64), torch.nn.LeakyReLU(0.2),
        torch.nn.Upsample(scale_factor=2), torch.nn.Conv2d(64, 16, 3, 1, 1),
    ).to(memory_format=torch.channels_last)
    x = torch.randn(32, 16, 64, 64, generator=torch.Generator().manual_seed(0)).to(memory_format=torch.channels_last)

    def step():
        with autocast(torch.device("cpu"), precision):
            loss = net(x).float().square().mean()
        loss.backward()
    return step


def measure_cpu_precisions(seconds: float = PROBE_SECONDS) -> dict[str, float]:
    """Probe steps per second in fp32 and in bf16 autocast on this CPU, with its current threads."""
    rates = {}
    for precision in ("fp32", "bf16"):
        step = _probe_step(precision)
        step()  # warm-up: oneDNN picks and caches its kernels
        count, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            step()
            count += 1
        rates[precision] = count / elapsed
    return rates


def probe_cache_dir() -> Path:
    """Where the probe's decisions are kept: $MEDXGAN_CACHE_DIR, else the user's cache folder."""
    if os.environ.get("MEDXGAN_CACHE_DIR"):
        return Path(os.environ["MEDXGAN_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "medxgan"


def probed_cpu_precision() -> dict:
    """The probe's decision for this CPU model, thread count and torch version: {"machine",
    "precision", "steps_per_second"}. Measured once, then read from the cache; the first job to
    store a decision wins (a hard link never replaces a file), so the jobs of a run all agree."""
    machine = f"{cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    path = probe_cache_dir() / f"precision-{hashlib.sha256(machine.encode()).hexdigest()[:16]}.json"
    with contextlib.suppress(OSError, ValueError):  # missing or unreadable: measure
        return json.loads(path.read_text())
    rates = measure_cpu_precisions()
    decision = {"machine": machine, "precision": "bf16" if rates["bf16"] >= BF16_MIN_SPEEDUP * rates["fp32"] else "fp32",
                "steps_per_second": rates}
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(decision, indent=1))
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
        return json.loads(path.read_text())
    except OSError as error:  # a read-only home: this job uses its own measurement, and says so
        log.warning("cannot keep the precision probe's decision in %s (%s)", path, error)
        return decision
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def resolve_precision(requested: str, device: torch.device) -> str:
    """'fp32' or 'bf16' for a requested 'auto', 'fp32' or 'bf16', logged."""
    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r} (expected one of {', '.join(PRECISIONS)})")
    if device.type != "cpu":  # a GPU that supports bf16 computes it fast
        if requested == "auto":
            requested = "bf16" if has_fast_bf16(device) else "fp32"
            log.info("precision auto: %s on %s", requested, describe(device))
        return requested
    if requested == "fp32":
        return requested
    decision = probed_cpu_precision()
    chosen, rates = decision["precision"], decision["steps_per_second"]
    figures = f"probe: fp32 {rates['fp32']:.1f}, bf16 {rates['bf16']:.1f} steps/s"
    if requested == "auto":
        log.info("precision auto: %s on %s (%s)", chosen, describe(device), figures)
        return chosen
    if chosen == "fp32":
        log.warning("precision bf16 on %s, where it is measured no faster than fp32 (%s)", describe(device), figures)
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
