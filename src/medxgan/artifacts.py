"""The files between steps, one write/read pair per kind: network weights with the spec that
rebuilds them, the inversion record, heatmaps, and the chunks of a sharded step. Every write is
atomic; every read names the file when it is not what the step needs."""

from __future__ import annotations

import json
from dataclasses import MISSING, fields
from pathlib import Path

import pandas as pd
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from medxgan.config import ConfigError
from medxgan.data.manifest import ImageSet
from medxgan.files import InputFileError, atomic_path, load_state_dict, save_tensors, write_json
from medxgan.hardware import channels_last
from medxgan.inversion import InversionRecord
from medxgan.nets.kinds import build_from_spec
from medxgan.shards import ShardError


def save_model(model: nn.Module, path: str | Path, spec: dict) -> None:
    """Weights as safetensors, with the spec needed to rebuild the network in the file's metadata."""
    save_tensors(model.state_dict(), path, {"spec": json.dumps(spec)})


def read_spec(path: str | Path) -> dict:
    """The spec `save_model` stored in a weights file's metadata."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError) as error:  # truncated, or not a safetensors file at all
        raise InputFileError(f"{path} is not a readable safetensors weights file ({error})") from None
    if "spec" not in metadata:
        raise InputFileError(f"{path} has no model spec in its metadata: was it written by medxgan?")
    try:
        spec = json.loads(metadata["spec"])
    except ValueError:
        raise InputFileError(f"{path}: the model spec in its metadata is not JSON") from None
    if not isinstance(spec, dict):
        raise InputFileError(f"{path}: the model spec in its metadata is not a JSON object")
    return spec


# The kinds of network a step may be given for each role (a user's classifier stands in for C).
ROLE_KINDS = {"classifier": ("classifier", "user_classifier"), "generator": ("generator",), "encoder": ("encoder",)}


def check_spec(path: Path, spec: dict, role: str, data: dict) -> None:
    """The network in `path` can play `role` on this run's images (data: image_size, channels and,
    where the file records them, the dataset's two labels); else one line saying what it is."""
    if spec.get("kind") not in ROLE_KINDS[role]:
        raise InputFileError(f"{path} holds a {spec.get('kind')}, not a {role}")
    for key, unit in (("image_size", "px images"), ("channels", "channel images")):
        if key in spec and spec[key] != data[key]:
            raise InputFileError(f"{path}: a {role} for {spec[key]}-{unit}, this run's data.{key} is {data[key]}")
    labels = [str(data["negative"]), str(data["positive"])] if "negative" in data else None
    if "labels" in spec and labels and spec["labels"] != labels:
        raise InputFileError(f"{path}: a {role} trained on {spec['labels'][0]!r} vs {spec['labels'][1]!r}, "
                             f"this run's dataset is {labels[0]!r} vs {labels[1]!r}")


def load_model(path: str | Path, device: torch.device | str = "cpu", role: str | None = None,
               data: dict | None = None, allowed_factory: str | bool = True) -> nn.Module:
    """A network saved by `save_model`, in eval mode, with gradients switched off for its weights,
    its convolutions in the faster channels-last layout. With a `role` and the run's `data`
    settings, the file is checked first (`check_spec`). `allowed_factory`: True for the run's own
    files; for a file from elsewhere, None or the one user factory the caller trusts."""
    spec = read_spec(path)
    if role is not None:
        check_spec(Path(path), spec, role, data)
    try:
        model = build_from_spec(spec, allowed_factory)
    except ConfigError as error:  # the same error, naming the file
        raise ConfigError(f"{path}: {error}") from None
    try:
        model.load_state_dict(load_state_dict(path))
    except RuntimeError as error:  # weights of other shapes than the spec says
        raise InputFileError(f"{path}: its weights do not fit the network its spec describes ({error})") from None
    channels_last(model)
    return model.to(device).eval().requires_grad_(False)


# The inversion record: latents.safetensors (tensors), inversion.csv (one row per image) and
# provenance.json, in the folder the invert step writes.
INVERSION_TABLE_COLUMNS = ("loss", "mse", "ssim", "p_image", "p_reconstruction", "p_negative")
CHUNK_KEYS = ("start", "stop", "total")


def inversion_table(record: InversionRecord, ids: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"id": ids, "row": record.rows.numpy(),
                         **{column: getattr(record, column).numpy() for column in INVERSION_TABLE_COLUMNS}})


def write_inversion(record: InversionRecord, ids: list[str], out_dir: Path, provenance_record: dict,
                    place: dict | None = None) -> None:
    """The invert step's folder; `place` (start, stop, total) marks one chunk of a sharded run."""
    out_dir = Path(out_dir)
    save_tensors(record.tensors(), out_dir / "latents.safetensors", place)
    write_csv(inversion_table(record, ids), out_dir / "inversion.csv")
    write_json(out_dir / "provenance.json", {**provenance_record, **(place or {})})


def read_inversion(path: Path, data: ImageSet, positions: slice | None = None) -> InversionRecord:
    """The inversion record in latents.safetensors (those at `positions`, for one chunk), checked to
    belong to the same test images (same manifest rows, same order)."""
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise InputFileError(f"{path} is not a readable inversion file ({error})") from None
    missing = [f.name for f in fields(InversionRecord) if f.default is MISSING and f.name not in tensors]
    if missing:
        raise InputFileError(f"{path} holds no inversion results (no {', '.join(missing)}): give the invert step's "
                             "latents.safetensors")
    record = InversionRecord(**tensors)
    if positions is not None:
        record = record.subset(positions)
    if not torch.equal(record.rows, data.rows):
        raise InputFileError(f"{path} was computed on other images than the manifest's test positives: rerun inversion")
    return record


def gather_inversion(chunks: list[Path], out_dir: Path) -> int:
    """Join the folders that `invert --chunk` wrote into the files one unsharded `invert` writes;
    the number of chunks."""
    chunks = [Path(chunk) for chunk in chunks]
    places = chunk_places([chunk / "latents.safetensors" for chunk in chunks])
    tensors = _gather_tensors([chunk / "latents.safetensors" for chunk in chunks])
    # float32 columns, read back as float32, are written with exactly the digits they had
    dtypes = {"id": str, "row": "int64", **{column: "float32" for column in INVERSION_TABLE_COLUMNS}}
    table = pd.concat([pd.read_csv(chunk / "inversion.csv", dtype=dtypes, keep_default_na=False) for chunk in chunks],
                      ignore_index=True)
    records = [json.loads((chunk / "provenance.json").read_text()) for chunk in chunks]
    out_dir = Path(out_dir)
    save_tensors(tensors, out_dir / "latents.safetensors")
    write_csv(table, out_dir / "inversion.csv")
    first = records[0]
    write_json(out_dir / "provenance.json", {
        "manifest": first["manifest"], "settings": first["settings"], "provenance": first["provenance"],
        "chunks": [{key: record[key] for key in (*CHUNK_KEYS, "provenance")} for record in records]})
    return len(places)


# Heatmaps: one safetensors file per explain job, each method's heatmaps under HEATMAPS + its name.
HEATMAPS = "heatmaps/"


def write_heatmaps(heatmaps: dict[str, torch.Tensor], rows: torch.Tensor, out: Path, place: dict | None = None) -> None:
    """Each method's heatmaps (N, H, W) by name, and the test rows they explain, in one file."""
    tensors = {f"{HEATMAPS}{method}": maps for method, maps in heatmaps.items()}
    save_tensors({**tensors, "rows": rows}, out, {"methods": json.dumps(list(heatmaps)), **(place or {})})


def read_heatmaps(paths: list[Path]) -> dict[str, torch.Tensor]:
    """Method name -> heatmaps, from the files `explain` wrote, in the order of their methods (the
    tables' column order); a method in two files is an error."""
    heatmaps = {}
    for path in paths:
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
            if "methods" not in metadata:
                raise InputFileError(f"{path} holds no heatmaps: it was not written by `medxgan explain`")
            for method in json.loads(metadata["methods"]):  # the file's keys are sorted by name
                if method in heatmaps:
                    raise InputFileError(f"{path} holds heatmaps of {method}, which an earlier file holds too")
                heatmaps[method] = f.get_tensor(HEATMAPS + method)
    return heatmaps


def gather_heatmaps(chunks: list[Path], out: Path) -> int:
    """Join the heatmap files that `explain --chunk` wrote into the file one unsharded `explain`
    writes; the number of chunks."""
    places = chunk_places(chunks)
    methods = {place["methods"] for place in places}
    if len(methods) != 1:
        raise ShardError(f"the chunks given hold heatmaps of different methods: {' and '.join(sorted(methods))}")
    save_tensors(_gather_tensors(chunks), out, {"methods": methods.pop()})
    return len(places)


# Chunks of a sharded step: each file's metadata says which images it holds.
def chunk_places(paths: list[Path]) -> list[dict]:
    """Each chunk file's metadata, checked to cover the positive test images once, in order."""
    places, end = [], 0
    for path in paths:
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
        if not set(CHUNK_KEYS) <= set(metadata):
            raise ShardError(f"{path} is not one chunk of a sharded step (no start/stop/total in its metadata)")
        place = {**metadata, **{key: int(metadata[key]) for key in CHUNK_KEYS}}
        if place["start"] != end or (places and place["total"] != places[0]["total"]):
            raise ShardError(f"{path} holds images {place['start']}:{place['stop']} of {place['total']}, "
                             f"but the chunks before it end at image {end}"
                             + (f" of {places[0]['total']}" if places else ""))
        places.append(place)
        end = place["stop"]
    if not places or end != places[0]["total"]:
        raise ShardError(f"the chunks given end at image {end}, not at the last one"
                         + (f" ({places[0]['total']})" if places else "") + ": a chunk is missing")
    return places


def _gather_tensors(paths: list[Path]) -> dict[str, torch.Tensor]:
    parts = [load_file(str(path)) for path in paths]
    return {name: torch.cat([part[name] for part in parts]) for name in parts[0]}


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
