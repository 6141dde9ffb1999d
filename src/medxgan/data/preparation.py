"""From a source's images to the manifest format: resize, binarise masks, deduplicate, split, report.

A source module turns its folder into Records (one per image, with its class and, where the
source fixes them, its split, mask and patient) and a list of what it left out. `prepare`
then writes, under the dataset folder:

    images/<class>/<name>.png   masks/<class>/<name>.png   resized to `data.image_size`
    manifest.csv                path,label,split,mask_path,patient_id (what every step reads)
    dropped.csv                 every image left out, with the reason
    origins.csv                 which source file each prepared image came from
    preparation.json            counts per split and label, class balance, duplicates, settings

Everything is built in a temporary folder and moved into place at the end, manifest.csv last;
the old manifest.csv is removed first, so a failed preparation leaves none behind.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import imagehash
import numpy as np
import pandas as pd
from PIL import Image

from medxgan.data.download import DataSourceError, file_hash
from medxgan.data.manifest import (
    PIXEL_MAX,
    READ_ERRORS,
    SIXTEEN_BIT_MAX,
    as_grey,
    image_stem,
    open_image,
    resize_pixels,
    write_manifest,
)
from medxgan.data.splits import TEST_STREAM, VAL_STREAM, pick_groups
from medxgan.files import progress, provenance, write_json

log = logging.getLogger(__name__)

MASK_ON = 255
ASPECT_TOLERANCE = 0.02  # a mask whose width/height differs more from its image's is not aligned to it
HASH_BITS = 64  # imagehash.phash's default 8x8 hash
PREPARED_ITEMS = ("images", "masks", "dropped.csv", "origins.csv", "preparation.json")
DROPPED_COLUMNS = ("source_file", "original_class", "source_split", "reason", "detail")
UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
PREPARING = "preparing"  # where a read error happened, in dropped.csv's detail


@dataclass(frozen=True)
class Record:
    """One image of a source, before preparation."""

    source_file: Path
    positive: bool
    original_class: str
    split: str | None = None  # train/val/test where the source fixes it; None: split here
    mask_file: Path | None = None
    patient_id: str = ""
    # reads (image, mask or None) from files that are not plain images (figshare's .mat files)
    loader: Callable[["Record"], tuple[Image.Image, Image.Image | None]] | None = None


@dataclass(frozen=True)
class Drop:
    source_file: str
    original_class: str
    source_split: str
    reason: str  # a short category, counted in preparation.json
    detail: str = ""


@dataclass
class Collected:
    """What a source module found: the images to prepare and the ones it left out."""

    root: Path
    records: list[Record]
    dropped: list[Drop] = field(default_factory=list)


@dataclass(frozen=True)
class PrepareOptions:
    image_size: int
    channels: int
    negative: str
    positive: str
    seed: int
    val_fraction: float  # share of the training images moved to validation
    test_fraction: float  # share of all images held out for testing, where the source has no test split
    near_duplicate_distance: int | None = None  # None: no deduplication

    @classmethod
    def from_settings(cls, s: dict, deduplicate: bool) -> "PrepareOptions":
        d, src = s["data"], s["source"]
        return cls(d["image_size"], d["channels"], d["negative"], d["positive"], s["seed"],
                   src["val_fraction"], src["test_fraction"],
                   src["near_duplicate_distance"] if deduplicate else None)


def drop(record: Record, reason: str, detail: str = "") -> Drop:
    return Drop(str(record.source_file), record.original_class, record.split or "", reason, detail)


# --- reading -----------------------------------------------------------------------------

def read_files(record: Record) -> tuple[Image.Image, Image.Image | None]:
    """The record's image and mask (None without one), read as every step reads files (`open_image`)."""
    image = open_image(record.source_file, PREPARING)
    return image, None if record.mask_file is None else open_image(record.mask_file, PREPARING, "mask")


def resize_image(image: Image.Image, size: int, channels: int) -> Image.Image:
    """Resized as the steps read it, in a mode a PNG keeps: a deep grey image (mode F) is written as
    16-bit greyscale so its precision survives, or as 8-bit RGB where three channels are wanted
    (PIL writes no 16-bit RGB PNG)."""
    small = resize_pixels(image, size, channels)
    if small.mode != "F":
        return small
    unit = np.clip(np.asarray(small, dtype=np.float64) / PIXEL_MAX, 0, 1)
    if channels == 1:
        return Image.fromarray(np.round(unit * SIXTEEN_BIT_MAX).astype(np.uint16))
    return Image.fromarray(np.round(unit * PIXEL_MAX).astype(np.uint8)).convert("RGB")


def resize_mask(mask: Image.Image, size: int) -> Image.Image:
    """Binary (0/255) and resized with nearest neighbour, so it stays binary; any channel count.

    Split at half the mask's brightest value: 0/1 and 0/255 masks and soft or JPEG edges all work."""
    grey = np.asarray(as_grey(mask))
    binary = (grey > grey.max() / 2).astype(np.uint8) * MASK_ON
    return Image.fromarray(binary).resize((size, size), Image.Resampling.NEAREST)


def _aspect_mismatch(image: Image.Image, mask: Image.Image) -> bool:
    return abs(image.width / image.height - mask.width / mask.height) > ASPECT_TOLERANCE


# --- duplicates --------------------------------------------------------------------------

def _perceptual_hashes(records: list[Record]) -> np.ndarray:
    hashes = np.zeros((len(records), HASH_BITS // 8), dtype=np.uint8)
    for i, record in enumerate(progress(records, desc="perceptual hashes", unit="image")):
        image, _ = (record.loader or read_files)(record)
        hashes[i] = np.packbits(imagehash.phash(image).hash.flatten())
    return hashes


def _find(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def _union(parent: list[int], i: int, j: int) -> None:
    parent[_find(parent, j)] = _find(parent, i)


def duplicate_groups(records: list[Record], max_distance: int) -> tuple[list[list[int]], list[str], np.ndarray]:
    """Groups of records that are byte-identical or whose perceptual hashes differ in at most
    `max_distance` bits (single linkage); also every record's file hash and perceptual hash."""
    digests = [file_hash(r.source_file, "sha256") for r in progress(records, desc="file hashes", unit="image")]
    phashes = _perceptual_hashes(records)
    parent = list(range(len(records)))
    first_of = {}
    for i, digest in enumerate(digests):
        _union(parent, first_of.setdefault(digest, i), i)
    for i in range(len(records) - 1):
        distances = np.unpackbits(phashes[i] ^ phashes[i + 1:], axis=1).sum(axis=1)
        for j in np.flatnonzero(distances <= max_distance):
            _union(parent, i, i + 1 + int(j))
    groups = {}
    for i in range(len(records)):
        groups.setdefault(_find(parent, i), []).append(i)
    return list(groups.values()), digests, phashes


SPLIT_PRIORITY = {"test": 0, "val": 1, "train": 2, None: 3}  # a group keeps its test copy: the test set stays whole


def deduplicate(records: list[Record], max_distance: int, root: Path) -> tuple[list[Record], list[Drop], dict]:
    """One image per group of exact or near duplicates; groups whose labels disagree are dropped whole."""
    groups, digests, phashes = duplicate_groups(records, max_distance)
    kept, dropped = [], []
    counts = Counter()
    for group in groups:
        group.sort(key=lambda i: (SPLIT_PRIORITY[records[i].split], str(records[i].source_file)))
        if len({records[i].positive for i in group}) > 1:
            classes = sorted({records[i].original_class for i in group})
            dropped += [drop(records[i], "duplicates with conflicting labels", ", ".join(classes)) for i in group]
            counts["conflicting_labels"] += len(group)
            continue
        keeper, *others = group
        kept.append(records[keeper])
        if others:
            counts["groups"] += 1
        for i in others:
            kind = "exact duplicate" if digests[i] == digests[keeper] else "near duplicate"
            distance = int(np.unpackbits(phashes[i] ^ phashes[keeper]).sum())
            dropped.append(drop(records[i], kind, f"of {_relative(records[keeper].source_file, root)} "
                                                  f"(perceptual hash distance {distance})"))
            counts[kind.replace(" ", "_") + "s"] += 1
            counts["across_splits"] += records[i].split != records[keeper].split
    kept.sort(key=lambda r: str(r.source_file))
    return kept, dropped, {"max_distance": max_distance, **counts}


# --- splits ------------------------------------------------------------------------------

def assign_splits(records: list[Record], options: PrepareOptions) -> list[str]:
    """The source's split where it has one; otherwise stratified by class and grouped by patient:
    `test_fraction` to test, then `val_fraction` of the rest to validation. Training images of a
    source without a validation split give `val_fraction` of themselves to validation."""
    splits = [r.split for r in records]
    strata = [r.original_class for r in records]
    groups = [r.patient_id or f"image {i}" for i, r in enumerate(records)]
    free = [i for i, split in enumerate(splits) if split is None]
    if free:
        test = pick_groups([strata[i] for i in free], [groups[i] for i in free], options.test_fraction,
                           [options.seed, TEST_STREAM])
        for i, is_test in zip(free, test):
            splits[i] = "test" if is_test else "train"
    source_has_val = any(r.split == "val" for r in records)
    carve = [i for i, split in enumerate(splits) if split == "train" and (records[i].split is None or not source_has_val)]
    if carve:
        val = pick_groups([strata[i] for i in carve], [groups[i] for i in carve], options.val_fraction,
                          [options.seed, VAL_STREAM])
        for i, is_val in zip(carve, val):
            if is_val:
                splits[i] = "val"
    return splits


# --- writing -----------------------------------------------------------------------------

def _relative(path: Path, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _unique_name(record: Record, taken: set[str]) -> str:
    """[<source's split>/]<class>/<file name>.png, made safe for every file system; a counter keeps
    names apart."""
    folder = UNSAFE_NAME_CHARS.sub("_", record.original_class)
    if record.split:
        folder = f"{record.split}/{folder}"
    stem = UNSAFE_NAME_CHARS.sub("_", image_stem(record.source_file))
    name, n = f"{folder}/{stem}.png", 1
    while name in taken:
        n += 1
        name = f"{folder}/{stem}-{n}.png"
    taken.add(name)
    return name


class MaskMismatch(ValueError):
    """A mask whose shape cannot be aligned with its image."""


def _write_one(record: Record, name: str, building: Path, options: PrepareOptions) -> tuple[str, bool]:
    """Write the resized image (and mask); return the mask's path ('' without one) and whether the
    source's mask was empty."""
    image, mask = (record.loader or read_files)(record)
    if mask is not None and _aspect_mismatch(image, mask):
        raise MaskMismatch(f"mask {mask.width}x{mask.height} does not fit image {image.width}x{image.height}")
    (building / "images" / name).parent.mkdir(parents=True, exist_ok=True)
    resize_image(image, options.image_size, options.channels).save(building / "images" / name)
    if mask is None:
        return "", False
    small = resize_mask(mask, options.image_size)
    if not np.asarray(small).any():
        return "", True  # no lesion to score against: the image stays, without a mask
    (building / "masks" / name).parent.mkdir(parents=True, exist_ok=True)
    small.save(building / "masks" / name)
    return f"masks/{name}", False


def _report(table: pd.DataFrame, dropped: list[Drop], options: PrepareOptions, extra: dict) -> dict:
    counts = table.groupby(["split", "label"]).size().unstack(fill_value=0)
    balance = (table.label == options.positive).groupby(table.split).mean().round(4)
    return {
        "counts": {split: {label: int(n) for label, n in row.items()} for split, row in counts.iterrows()},
        "positive_share": balance.to_dict(),
        "original_classes": table.groupby(["split", "original_class"]).size().unstack(fill_value=0).to_dict("index"),
        "masks": int((table.mask_path != "").sum()),
        "patients": int(table.loc[table.patient_id != "", "patient_id"].nunique()),
        "dropped": dict(Counter(d.reason for d in dropped)),
        **extra,
        "settings": {"image_size": options.image_size, "channels": options.channels, "seed": options.seed,
                     "negative": options.negative, "positive": options.positive,
                     "val_fraction": options.val_fraction, "test_fraction": options.test_fraction},
        "provenance": provenance(options.seed),
    }


def prepare(collected: Collected, options: PrepareOptions, out_dir: Path, extra: dict | None = None) -> Path:
    """Write the prepared dataset to out_dir (see the module's docstring); return manifest.csv's path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "manifest.csv").unlink(missing_ok=True)
    records, dropped, extra = collected.records, list(collected.dropped), dict(extra or {})
    if options.near_duplicate_distance is not None:
        records, duplicates, extra["duplicates"] = deduplicate(records, options.near_duplicate_distance, collected.root)
        dropped += duplicates
    building = Path(tempfile.mkdtemp(dir=out_dir, prefix=".building-"))
    try:
        rows, kept, taken, empty_masks = [], [], set(), 0
        for record in progress(records, desc="preparing", unit="image"):
            name = _unique_name(record, taken)
            try:
                mask_path, mask_empty = _write_one(record, name, building, options)
            except MaskMismatch as err:
                dropped.append(drop(record, "mask not aligned", str(err)))
                continue
            except (*READ_ERRORS, KeyError) as err:
                dropped.append(drop(record, "unreadable", str(err)))
                continue
            empty_masks += mask_empty and record.positive
            rows.append({"path": f"images/{name}", "label": options.positive if record.positive else options.negative,
                         "mask_path": mask_path, "patient_id": record.patient_id,
                         "original_class": record.original_class,
                         "source_file": _relative(record.source_file, collected.root)})
            kept.append(record)
        if not rows:
            raise DataSourceError(f"{collected.root}: no usable image found")
        table = pd.DataFrame(rows)
        table["split"] = assign_splits(kept, options)
        extra["positives_with_empty_mask"] = empty_masks
        report = _report(table, dropped, options, extra)
        write_json(building / "preparation.json", report)
        dropped_table = pd.DataFrame(dropped, columns=list(DROPPED_COLUMNS))
        dropped_table["source_file"] = [_relative(Path(f), collected.root) for f in dropped_table.source_file]
        dropped_table.to_csv(building / "dropped.csv", index=False)
        table[["path", "source_file", "original_class"]].to_csv(building / "origins.csv", index=False)
        write_manifest(table, building / "manifest.csv")
        _install(building, out_dir)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    log.info("prepared %d images (%s), dropped %d; positive share per split %s", len(table),
             report["counts"], len(dropped), report["positive_share"])
    return out_dir / "manifest.csv"


def _install(building: Path, out_dir: Path) -> None:
    """Move the prepared files into out_dir, manifest.csv last."""
    for item in PREPARED_ITEMS:
        target = out_dir / item
        if target.is_dir():
            shutil.rmtree(target)
        if (building / item).exists():
            os.replace(building / item, target)
    os.replace(building / "manifest.csv", out_dir / "manifest.csv")
