"""`medxgan explain-images`: explain new image files with a trained bundle, no manifest needed.

Every readable image is resized as the bundle's data settings say and explained; per image the
pipeline figure, one `.npy` heatmap per method, and one row of `explanations.csv` (C's
probabilities, the reconstruction's error, whether C agrees on x and G(z1, z2)). An image C calls
negative also gets its positive realisation (the smallest change C calls positive, see
`medxgan.inversion.negative_counterfactuals`), as a figure and a heatmap. An unreadable file is
reported and skipped; the others are still explained, and the step then fails naming it.

The arguments are checked before anything is computed: images to explain, an output folder that is
new or empty (never mixed with the figures of an earlier run) and outside the images, known methods.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from medxgan.api import DEFAULT_METHODS, MedXGAN
from medxgan.config import ConfigError
from medxgan.data.manifest import (
    IMAGE_SUFFIXES,
    ImageSet,
    ManifestError,
    image_stem,
    is_image_name,
    load_image,
    network_input,
    unit_image,
)
from medxgan.data.medical_formats import DEFAULT_SLICE_AXIS, MedicalFormatError, is_nifti, nifti_slices, slice_name
from medxgan.explainers import EXPLAINERS
from medxgan.files import atomic_path, progress
from medxgan.report import figures

log = logging.getLogger(__name__)


class UnreadableImages(ManifestError):
    """Some of the given files could not be read (the others were explained)."""


def image_files(paths: list[Path]) -> list[Path]:
    """The files given, and the image files under each folder given (recursively, sorted); an error
    saying what the folders hold when there is no image file among them."""
    files, skipped = [], []
    for path in map(Path, paths):
        if path.is_dir():
            found = files_under(path)
            files += [p for p in found if is_image_name(p)]
            skipped += [p for p in found if not is_image_name(p)]
        elif is_image_name(path) and path.is_file():
            files.append(path)
        elif path.is_file():
            raise ConfigError(f"{path}: explain-images reads {_formats()}, not {path.suffix or 'files without a suffix'}")
        else:
            raise FileNotFoundError(f"no such image file or folder: {path}")
    if not files:
        raise ConfigError(f"no image files to explain in {', '.join(map(str, paths))}: "
                          + (f"found {_suffix_counts(skipped)}" if skipped else "found no files")
                          + f"; explain-images reads {_formats()}")
    if skipped:
        log.warning("skipped %s: explain-images reads %s", _suffix_counts(skipped), _formats())
    return files


def files_under(folder: Path) -> list[Path]:
    """Every file under `folder`, sorted, in symlinked subfolders too (which Path.rglob skips); each
    real folder is walked once, so a link loop ends."""
    walked, files = set(), []
    for root, subfolders, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in walked:
            subfolders[:] = []
            continue
        walked.add(real)
        files += [Path(root) / name for name in names]
    return sorted(p for p in files if p.is_file())


def _formats() -> str:
    return ", ".join(sorted(IMAGE_SUFFIXES))


def _suffix_counts(files: list[Path]) -> str:
    """'3 files (2 .dcm, 1 .gif)': how many files, and how many of them have each suffix."""
    counts = Counter(p.suffix.lower() or "no suffix" for p in files)
    by_suffix = ", ".join(f"{n} {suffix}" for suffix, n in sorted(counts.items()))
    return f"{len(files)} file{'s' if len(files) > 1 else ''} ({by_suffix})"


def check_out_dir(out_dir: Path, paths: list[Path]) -> None:
    """`out_dir` is new or empty, and outside every folder of images: a later run would otherwise
    explain its figures, or mix its figures with those of an earlier run."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is a file, not a folder")
    for folder in (Path(p) for p in paths if Path(p).is_dir()):
        if out_dir.resolve().is_relative_to(folder.resolve()):
            raise ConfigError(f"--out {out_dir} lies inside the images to explain ({folder}): choose a folder elsewhere")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise ConfigError(f"--out {out_dir} already holds files: give a new or empty folder (explain-images does not "
                          "mix its figures with those of another run)")


EXPLAINING = "explain-images"  # where a read error happened, beside the file it names
# An image whose reconstruction error exceeds this many times the worst of the bundle's own test
# positives is one G cannot draw: its maps explain a different image than the one given.
OUTSIDE_DISTRIBUTION_FACTOR = 2.0


def read_images(files: list[Path], size: int, channels: int, slice_axis: int = DEFAULT_SLICE_AXIS,
                slices: slice = slice(None)) -> tuple[list[str], torch.Tensor, list[str]]:
    """What was read, one name per image (the file, or, as a manifest names it, FILE#slice=K for
    slice K of a NIfTI volume across voxel axis `slice_axis`, those `slices` picks), the images
    (N, C, size, size) in [-1, 1], and the unreadable files' errors."""
    names, images, errors = [], [], []
    for file in progress(files, desc="reading images"):
        try:
            if is_nifti(file):
                volume = _read_slices(file, slice_axis, slices)
                names += [slice_name(file, slice_axis, k) if len(volume) > 1 else str(file) for k, _ in volume]
                images += [torch.from_numpy(network_input(unit_image(plane), size, channels)) for _, plane in volume]
            else:
                images.append(torch.from_numpy(load_image(file, EXPLAINING, size, channels)))
                names.append(str(file))
        except ManifestError as error:
            log.error("%s", error)
            errors.append(str(error))
    return names, torch.stack(images) if images else torch.empty(0, channels, size, size), errors


def _read_slices(file: Path, axis: int, slices: slice) -> list:
    try:
        return nifti_slices(file, axis, slices)
    except MedicalFormatError as error:
        raise ManifestError(f"{EXPLAINING}: cannot read image {file}: {error}") from error


def figure_name(position: int, name: str) -> str:
    """NNNN_STEM or NNNN_STEM_sliceK: the position keeps two files of one name apart."""
    return f"{position:04d}_{image_stem(Path(name))}"


def _as_image_set(images: torch.Tensor, files: list[Path]) -> ImageSet:
    n, size = len(images), images.shape[-1]
    return ImageSet(images=images, labels=torch.full((n,), -1), masks=torch.zeros(n, size, size, dtype=torch.bool),
                    has_mask=torch.zeros(n, dtype=torch.bool), ids=[str(f) for f in files], rows=torch.arange(n))


def explain_images(paths: list[Path], bundle: Path, out_dir: Path, methods=DEFAULT_METHODS,
                   classifier_factory: str | None = None, slice_axis: int = DEFAULT_SLICE_AXIS,
                   slices: slice = slice(None)) -> pd.DataFrame:
    """Explain every image file under `paths`, and each slice of a NIfTI volume (see `read_images`),
    with the bundle's networks into `out_dir` (`classifier_factory`: see MedXGAN.from_bundle)."""
    unknown = [method for method in methods if method not in EXPLAINERS]
    if unknown:
        raise ConfigError(f"unknown methods {', '.join(unknown)}: choose from {', '.join(EXPLAINERS)}")
    sources = image_files(paths)
    check_out_dir(out_dir, paths)
    explainer = MedXGAN.from_bundle(bundle, classifier_factory=classifier_factory)
    data_cfg = explainer.settings["data"]
    files, images, errors = read_images(sources, data_cfg["image_size"], data_cfg["channels"], slice_axis, slices)
    out_dir = Path(out_dir)
    table = pd.DataFrame()
    if len(images):
        codes = explainer.invert(images)
        heatmaps = explainer.explain(images, methods, codes=codes)
        negatives = (codes.p_image < 0.5).nonzero().flatten()
        realisations = explainer.positive_realisations(images[negatives], negatives) if len(negatives) else None
        table = flag_outside_distribution(
            _write_explanations(explainer, _as_image_set(images, files), codes, heatmaps, out_dir), explainer.reference)
        table = _write_positive_realisations(table, images, negatives, realisations, out_dir)
    if errors:
        explained = f" (the others are explained in {out_dir})" if files else ""
        raise UnreadableImages(f"{len(errors)} of {len(sources)} files could not be read{explained}: "
                               + "; ".join(errors))
    return table


def flag_outside_distribution(table: pd.DataFrame, reference: dict | None) -> pd.DataFrame:
    """The column `outside_bundle_distribution`: reconstruction MSE above OUTSIDE_DISTRIBUTION_FACTOR
    times the largest of the bundle's test positives (empty for a bundle without that record), and a
    warning naming the images it flags."""
    if reference is None:
        log.warning("the bundle records no reconstruction error of its own test images (written before "
                    "reference.json existed): images outside its distribution are not flagged")
        return table.assign(outside_bundle_distribution=pd.NA)
    limit = OUTSIDE_DISTRIBUTION_FACTOR * reference["max"]
    outside = table.reconstruction_mse > limit
    if outside.any():
        log.warning("%d of %d images are reconstructed with an error above %.4f (%.0fx the worst of the bundle's %d "
                    "test positives): G cannot draw them, so their maps explain another image: %s", outside.sum(),
                    len(table), limit, OUTSIDE_DISTRIBUTION_FACTOR, reference["n"], ", ".join(table.file[outside]))
    return table.assign(outside_bundle_distribution=outside)


def _save_npy(array: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def _write_positive_realisations(table: pd.DataFrame, images: torch.Tensor, negatives: torch.Tensor,
                                 realisations: dict | None, out_dir: Path) -> pd.DataFrame:
    """The figure and map of each image C calls negative, and their columns in explanations.csv."""
    columns = {"made_positive": [pd.NA] * len(table), "p_positive_realisation": [np.nan] * len(table),
               "positive_change_l1": [np.nan] * len(table)}
    for j, i in enumerate(negatives.tolist()):
        name = table.name[i]
        _save_npy(realisations["difference"][j].numpy(), out_dir / "heatmaps" / f"{name}_positive_realisation.npy")
        figures.save(figures.positive_realisation_row(images[i], float(table.p_positive[i]), realisations, j),
                     out_dir / "figures" / f"{name}_positive_realisation.png")
        columns["made_positive"][i] = bool(realisations["flipped"][j])
        columns["p_positive_realisation"][i] = float(realisations["p_positive"][j])
        columns["positive_change_l1"][i] = float(realisations["change_l1"][j])
    table = table.assign(**columns)
    with atomic_path(out_dir / "explanations.csv") as tmp:
        table.to_csv(tmp, index=False)
    return table


def _write_explanations(explainer: MedXGAN, data: ImageSet, codes: dict, heatmaps: dict, out_dir: Path) -> pd.DataFrame:
    rows = []
    for i, file in enumerate(progress(data.ids, desc="writing explanations")):
        name = figure_name(i, file)
        for method, maps in heatmaps.items():
            _save_npy(maps[i].numpy(), out_dir / "heatmaps" / f"{name}_{method}.npy")
        figures.save(figures.pipeline_rows(explainer.classifier, data, codes, heatmaps, [i]),
                     out_dir / "figures" / f"{name}.png")
        p_image, p_reconstruction = float(codes.p_image[i]), float(codes.p_reconstruction[i])
        rows.append({"file": file, "name": name, "p_negative": 1 - p_image, "p_positive": p_image,
                     "called_positive": p_image >= 0.5, "p_reconstruction": p_reconstruction,
                     "p_negative_realisation": float(codes.p_negative[i]),
                     "reconstruction_mse": float(codes.mse[i]), "reconstruction_ssim": float(codes.ssim[i]),
                     "classifier_agrees_on_reconstruction": (p_image >= 0.5) == (p_reconstruction >= 0.5)})
    return pd.DataFrame(rows)
