"""Files: atomic writes, JSON, checksums, tensors and weights on disk, provenance records, progress
bars. Torch loads only where a function needs it, so result readers stay light."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class InputFileError(ValueError):
    """A file given to a step (weights, inversion results) is not what it needs; the message names the file."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds.

    A reader never sees a half-written file, and a crash leaves the previous version intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; give it the usual mode
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_tensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict | None = None) -> None:
    """Tensors as one safetensors file, written atomically, with string metadata."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({name: t.detach().cpu().contiguous() for name, t in tensors.items()}, str(tmp),
                  metadata={key: str(value) for key, value in (metadata or {}).items()})


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, data, sort_keys: bool = True) -> None:
    """`data` as indented JSON, written atomically; keys sorted unless `sort_keys` is False."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=sort_keys, default=str) + "\n")


def portable_path(path: str | os.PathLike) -> str:
    """`path` as a step records it: relative to the working directory (the repository root when
    Snakemake or DVC runs the step) when it lies under it, so a record stays true in another clone;
    absolute when it lies elsewhere (a user's own manifest). A reader joins it to its repository
    root, `Path(root) / value`, which leaves an absolute value as it is."""
    absolute = Path(path).resolve()
    try:
        return absolute.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(absolute)


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read in blocks."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def provenance(seed: int | None = None, device: torch.device | None = None, precision: str | None = None) -> dict:
    """Seeds, versions, hardware and number format, recorded next to every result."""
    from importlib.metadata import version

    import numpy as np
    import torch

    from medxgan.hardware import cpu_bf16_features, cpu_model

    info = {
        "medxgan": version("medxgan"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "processor": cpu_model(),
        "cpu_bf16_features": cpu_bf16_features(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device) if device is not None else None,
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "precision": precision,
    }
    if seed is not None:
        info["seed"] = seed
    return info


def progress(iterable=None, **kwargs):
    """A tqdm bar that stays readable in a log file: frequent redraws on a terminal, rare ones
    otherwise, and none inside a Jupyter kernel, where it would print as a red stderr box."""
    import sys

    from tqdm import tqdm  # the text bar: tqdm.auto's widget warns in a notebook without ipywidgets

    kwargs.setdefault("mininterval", 0.2 if sys.stderr.isatty() else 30.0)
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("disable", "ipykernel" in sys.modules)
    return tqdm(iterable, **kwargs)


def load_state_dict(path: str | Path) -> dict:
    """Weights from .safetensors, or from a torch file without unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's message advises weights_only=False: running the file's code
        raise InputFileError(f"{path} holds more than tensors, and unpickling it could run code: save the weights "
                             "with safetensors, or as a plain state dict (torch.save(model.state_dict(), ...))") from None
