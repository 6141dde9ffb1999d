"""The manifest check, before any training: what makes a run wrong without making it fail.

`medxgan check-manifest` (the workflow's first rule after the data exist) reads the manifest as
every step will (with the validation split drawn where it has none) and looks for:

errors (the run stops, naming the CSV lines):
- an image listed twice (refused as the manifest is read, whatever the splits and labels);
- the same content in two splits (the same bytes under two names), naming both files;
- slices of one NIfTI volume in two splits (neighbouring slices are nearly the same image);
- a class missing from train, or no positive test image (nothing to explain);
- a path that leaves the manifest's folder;
- a healthy twin whose pixel size differs from its image's;
warnings (the run goes on):
- a class missing from val, or no negative test image (the counterfactual checks need them);
- a mask on a negative image; an all-zero mask on a positive (its localisation scores would be 0);
- a healthy twin on a negative image (only positives are compared with their twins);
- positive test images without masks (no localisation scores for them).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from medxgan.data.manifest import ManifestError, check_twin_size, listed_sha256, load_mask, read_manifest
from medxgan.data.medical_formats import volume_slice

log = logging.getLogger(__name__)


def _lines(rows: pd.DataFrame) -> str:
    return ", ".join(map(str, rows["line"].tolist()))


def _same_content_in_two_splits(table: pd.DataFrame) -> list[str]:
    """Copies of one image under other names (each name is listed once, `read_manifest` sees to that)."""
    found = []
    for _, rows in table.groupby("content", sort=False):
        if rows["split"].nunique() > 1:
            found.append(f"images {', '.join(rows['path'])} have the same content and are in splits "
                         f"{', '.join(sorted(rows['split'].unique()))} (lines {_lines(rows)})")
    return found


def _volume_in_two_splits(table: pd.DataFrame) -> list[str]:
    volumes = [str(part.file) if part else None for part in map(volume_slice, table["image_file"])]
    sliced = table.assign(volume=volumes).dropna(subset=["volume"])
    return [f"slices of volume {volume} are in splits {', '.join(sorted(rows['split'].unique()))} (lines "
            f"{_lines(rows)}): keep a volume's slices in one split"
            for volume, rows in sliced.groupby("volume", sort=False) if rows["split"].nunique() > 1]


def _errors(table: pd.DataFrame, manifest: Path, negative: str, positive: str) -> list[str]:
    errors = _same_content_in_two_splits(table) + _volume_in_two_splits(table)
    for label in (negative, positive):
        if not ((table["split"] == "train") & (table["label"] == label)).any():
            errors.append(f"split 'train' has no {label!r} image: C cannot learn the class")
    if not ((table["split"] == "test") & (table["label"] == positive)).any():
        errors.append(f"split 'test' has no {positive!r} image: there is nothing to explain")
    folder = manifest.parent.resolve()
    outside = table[[not Path(f).is_relative_to(folder) for f in table["image_file"]]]
    if len(outside):
        errors.append(f"paths leave the manifest's folder {folder} (lines {_lines(outside)})")
    return errors + _twin_size_errors(table)


def _twin_size_errors(table: pd.DataFrame) -> list[str]:
    errors = []
    for row in table[table["twin_file"].notna()].itertuples():
        try:
            check_twin_size(row.twin_file, row.image_file, f"line {row.line}")
        except ManifestError as error:
            errors.append(str(error))
    return errors


def _has_empty_mask(row, manifest: Path, image_size: int) -> bool:
    return row.mask_file is not None and not load_mask(row.mask_file, f"{manifest}, line {row.line}", image_size).any()


def _warnings(table: pd.DataFrame, manifest: Path, negative: str, positive: str, image_size: int) -> list[str]:
    warnings = []
    for split, label in (("val", negative), ("val", positive), ("test", negative)):
        if not ((table["split"] == split) & (table["label"] == label)).any():
            warnings.append(f"split {split!r} has no {label!r} image")
    masked_negatives = table[(table["label"] == negative) & table["mask_file"].notna()]
    if len(masked_negatives):
        warnings.append(f"negative images with a lesion mask (lines {_lines(masked_negatives)})")
    twinned_negatives = table[(table["label"] == negative) & table["twin_file"].notna()]
    if len(twinned_negatives):
        warnings.append(f"negative images with a healthy twin, which nothing reads (lines {_lines(twinned_negatives)})")
    positives = table[table["label"] == positive]
    empty = positives[[_has_empty_mask(row, manifest, image_size) for row in positives.itertuples()]]
    if len(empty):
        warnings.append(f"positive images whose mask is empty: localisation scores 0 for them (lines {_lines(empty)})")
    unmasked = positives[(positives["split"] == "test") & positives["mask_file"].isna()]
    if len(unmasked):
        warnings.append(f"{len(unmasked)} positive test images have no mask: no localisation scores for them")
    return warnings


def check_manifest(manifest: str | Path, negative: str, positive: str, image_size: int, seed: int) -> dict:
    """The report (counts per split and label, warnings); a ManifestError listing every error."""
    manifest = Path(manifest)
    table = read_manifest(manifest, negative, positive, seed)
    table["content"] = [listed_sha256(f) for f in table["image_file"]]
    errors = _errors(table, manifest, negative, positive)
    if errors:
        raise ManifestError(f"{manifest} fails the manifest check:\n  " + "\n  ".join(errors))
    warnings = _warnings(table, manifest, negative, positive, image_size)
    for warning in warnings:
        log.warning("%s: %s", manifest, warning)
    counts = table.groupby(["split", "label"]).size()
    return {"manifest": str(manifest.resolve()), "rows": len(table), "warnings": warnings,
            "counts": {f"{split}/{label}": int(n) for (split, label), n in counts.items()},
            "masks": int(table["mask_file"].notna().sum()), "images": int(np.unique(table["image_file"].astype(str)).size),
            "healthy_twins": int(table["twin_file"].notna().sum()),
            "content_sha256": _content_digest(table)}


def _content_digest(table: pd.DataFrame) -> str:
    """One SHA-256 over every row's path, label, split and image, mask and healthy twin content: it
    changes exactly when what the run reads changes. A row without a twin adds no field for it, so
    a manifest without twins keeps the digest it had before twins existed."""
    digest = hashlib.sha256()
    for row in table.itertuples(index=False):
        mask = listed_sha256(row.mask_file) if row.mask_file is not None else ""
        twin = f"\t{listed_sha256(row.twin_file)}" if row.twin_file is not None else ""
        digest.update(f"{row.path}\t{row.label}\t{row.split}\t{row.content}\t{mask}{twin}\n".encode())
    return digest.hexdigest()
