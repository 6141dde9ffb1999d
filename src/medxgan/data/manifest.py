"""The manifest: one CSV listing every image with its label, split, optional mask and patient.

An optional column `healthy_twin_path` names a positive's healthy twin: the same image without
its lesion (the built-in phantoms have one), against which the evaluation scores the negative
realisation G(z1, 0) and every heatmap. A manifest without the column reads as before.

Paths in a manifest are relative to the manifest's folder (absolute paths also work). A path may
name one slice of a NIfTI volume, VOLUME.nii.gz#slice=K or VOLUME.nii.gz#axis=A,slice=K (see
`medxgan.data.medical_formats`), in every file column: a mask volume's slice masks its image's. Every
problem is reported as a ManifestError naming the manifest, the line as an editor shows it
(the header is line 1) and the column or file at fault. Each image is listed on one row. A
manifest without `val` rows gets a validation split drawn from its `train` rows (see
`draw_validation`).
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageOps
from tqdm import tqdm

from medxgan.config import SOURCE_DEFAULTS
from medxgan.data.medical_formats import (
    DEFAULT_SLICE_AXIS,
    DICOM_SUFFIXES,
    NIFTI_SUFFIXES,
    PICTURE_SUFFIXES,
    SLICE_NAME_FORMS,
    MedicalFormatError,
    is_medical,
    read_medical,
    slice_name,
    volume_slice,
)
from medxgan.data.splits import VAL_STREAM, pick_groups
from medxgan.files import atomic_path, file_sha256

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ("path", "label", "split", "mask_path", "patient_id")
TWIN_COLUMN = "healthy_twin_path"
OPTIONAL_COLUMNS = (TWIN_COLUMN,)  # read and written where a manifest has them
SPLITS = ("train", "val", "test")
LABEL_CHOICES = ("positive", "negative")
FIRST_DATA_LINE = 2  # line 1 is the header
IMAGE_MODES = {1: "L", 3: "RGB"}
HALF_PIXEL_RANGE = 127.5  # maps 8-bit 0..255 onto -1..1
IMAGE_RANGE = 2.0  # so images span [-1, 1]
PIXEL_MAX = 255.0  # deeper images are read onto the 8-bit scale (as floats), so one formula maps all onto -1..1
SIXTEEN_BIT_MAX = 65535
DEEP_GREY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")  # PIL's modes for 16-bit, 32-bit and float grey
MIN_IMAGE_SIDE = 16  # smaller files are icons or thumbnails, not scans: resizing them up would invent the image
MAX_MASK_LEVELS = 2
PROGRESS_MIN_IMAGES = 500  # below this, loading is quick enough to run silently
READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
VAL_FRACTION = SOURCE_DEFAULTS["val_fraction"]  # the share a public source's validation split gets too
MIN_GROUPS_TO_DRAW = 2  # a label needs a patient (or image) left in train and one moved to val
OTHER_DELIMITERS = ";\t|"  # what a spreadsheet in a locale with decimal commas, or a TSV, puts between columns


class ManifestError(ValueError):
    """A manifest, or a file it lists, that cannot be used; the message says where."""


def _read_table(manifest: Path) -> pd.DataFrame:
    if not manifest.is_file():
        raise ManifestError(f"{manifest}: manifest file not found")
    try:
        # blank lines are kept (and dropped later) so row positions map onto line numbers
        table = pd.read_csv(manifest, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ManifestError(f"{manifest}: cannot parse the CSV: {err}") from err
    missing = [column for column in MANIFEST_COLUMNS if column not in table.columns]
    if missing:
        _check_delimiter(manifest)
        raise ManifestError(f"{manifest}: missing column(s) {', '.join(missing)}; "
                            f"a manifest needs {', '.join(MANIFEST_COLUMNS)}")
    table["line"] = table.index + FIRST_DATA_LINE
    blank = (table.drop(columns="line") == "").all(axis=1)
    if blank.all():
        raise ManifestError(f"{manifest}: the manifest has no rows, only its header; list one image per line")
    return table[~blank].reset_index(drop=True)


def _check_delimiter(manifest: Path) -> None:
    """A header separated by another character than a comma reads as one column: say so, rather
    than list every column as missing."""
    with manifest.open(encoding="utf-8-sig", errors="replace") as lines:
        header = lines.readline()
    try:
        delimiter = csv.Sniffer().sniff(header, delimiters=OTHER_DELIMITERS).delimiter
    except csv.Error:
        return  # no other delimiter either: the columns are missing indeed
    raise ManifestError(f"{manifest}: line 1 separates its columns with {delimiter!r}; a manifest separates them "
                        f"with commas ({','.join(MANIFEST_COLUMNS)}): save it as comma-separated CSV")


def _listed_file(manifest: Path, where: str, column: str, value: str, what: str) -> Path | None:
    """The file a row's `column` names, which must exist (for a volume's slice, FILE#slice=K, the
    volume), as an absolute path; None where the cell is empty."""
    if not value:
        return None
    part = volume_slice(value)
    file = (manifest.parent / (part.file if part else value)).resolve()
    if not file.is_file():
        hint = f" (one slice of a NIfTI volume is named {SLICE_NAME_FORMS})" if "#" in value and not part else ""
        raise ManifestError(f"{where}: column {column!r}: {what} file {file} not found{hint}")
    return Path(slice_name(file, part.axis, part.index)) if part else file


def listed_sha256(file: Path) -> str:
    """The SHA-256 of a listed file's content; for a volume's slice, of the volume and the slice's place."""
    part = volume_slice(file)
    if part is None:
        return file_sha256(file)
    return f"{file_sha256(part.file)}#axis={part.axis},slice={part.index}"


def _check_row(row, manifest: Path, negative: str, positive: str) -> tuple[Path, Path | None, Path | None]:
    """Validate one row; return its image file, mask file and healthy twin file (None where absent)."""
    where = f"{manifest}, line {row.line}"
    if not row.path:
        raise ManifestError(f"{where}: column 'path' is empty")
    if row.split not in SPLITS:
        raise ManifestError(f"{where}: column 'split' has {row.split!r}; expected one of {', '.join(SPLITS)}")
    if row.label not in (negative, positive):
        raise ManifestError(f"{where}: column 'label' has {row.label!r}; expected {negative!r} or {positive!r}")
    return (_listed_file(manifest, where, "path", row.path, "image"),
            _listed_file(manifest, where, "mask_path", row.mask_path, "mask"),
            _listed_file(manifest, where, TWIN_COLUMN, getattr(row, TWIN_COLUMN, ""), "healthy twin"))


def _check_listed_once(table: pd.DataFrame, image_files: list[Path], manifest: Path) -> None:
    """Each image on one row: a repeated one would be scored twice, weigh twice in training, or sit
    in two splits."""
    rows_of: dict[Path, list] = {}
    for row, file in zip(table.itertuples(index=False), image_files):
        rows_of.setdefault(file, []).append(row)
    repeated = [rows for rows in rows_of.values() if len(rows) > 1]
    if repeated:
        listed = "; ".join(f"image {rows[0].path} is listed on lines {', '.join(str(row.line) for row in rows)}"
                           for rows in repeated)
        raise ManifestError(f"{manifest}: {listed}; each image needs exactly one row")


def _training_groups(train: pd.DataFrame) -> list[str]:
    """Each training row's patient, or the row itself where patient_id is empty."""
    return [patient or f"line {line}" for patient, line in zip(train["patient_id"], train["line"])]


def _check_drawable(train: pd.DataFrame, groups: list[str], labels: tuple[str, str], manifest: Path) -> None:
    """Every label needs two training patients (or images) to give one to validation."""
    cannot = f"{manifest}: no rows in split 'val', and none can be drawn from 'train'"
    if train.empty:
        raise ManifestError(f"{cannot}: 'train' has no rows either; add 'val' rows")
    group_counts = pd.Series(groups, index=train.index).groupby(train["label"]).nunique()
    for label in labels:
        count = int(group_counts.get(label, 0))
        if count < MIN_GROUPS_TO_DRAW:
            raise ManifestError(f"{cannot}: label {label!r} has {count} training patient(s) or image(s), "
                                f"at least {MIN_GROUPS_TO_DRAW} are needed; add 'val' rows")


def draw_validation(table: pd.DataFrame, seed: int, manifest: Path, labels: tuple[str, str]) -> pd.DataFrame:
    """The table with a validation split carved from train where it has no 'val' row (else unchanged).

    Like a public source's: VAL_FRACTION of each label's patients, a patient kept whole (rows
    without patient_id each stand alone), by a shuffle seeded with `seed`. It depends only on the
    table and the seed, so every step that reads the manifest sees the same split.
    """
    if (table["split"] == "val").any():
        return table
    train = table[table["split"] == "train"]
    groups = _training_groups(train)
    _check_drawable(train, groups, labels, manifest)
    to_val = pick_groups(list(train["label"]), groups, VAL_FRACTION, [seed, VAL_STREAM])
    moved = train["label"][to_val].value_counts()
    drawn = table.copy()
    drawn.loc[train.index[to_val], "split"] = "val"
    log.warning("%s has no 'val' rows: moved %d of %d 'train' rows to 'val' (%s), %.0f%% of each label's "
                "patients (or images) drawn with seed %d", manifest, to_val.sum(), len(train),
                ", ".join(f"{label}: {int(moved.get(label, 0))}" for label in labels), 100 * VAL_FRACTION, seed)
    return drawn


def read_manifest(manifest: str | Path, negative: str, positive: str, seed: int | None = None) -> pd.DataFrame:
    """Read and validate a manifest.

    Adds columns 'target' (0 negative, 1 positive), 'line' (the CSV line number), and
    'image_file' / 'mask_file' / 'twin_file' (absolute Paths; mask_file None where there is no
    mask, twin_file None where there is no healthy twin, as in a manifest without the column).
    Empty cells are empty strings. With a `seed`, a manifest without 'val' rows gets them drawn
    from 'train' (`draw_validation`); without one, the splits are read as written.
    """
    if negative == positive:
        raise ManifestError(f"{manifest}: the negative and positive labels must differ, both are {negative!r}")
    manifest = Path(manifest)
    table = _read_table(manifest)
    files = [_check_row(row, manifest, negative, positive) for row in table.itertuples(index=False)]
    _check_listed_once(table, [image_file for image_file, _, _ in files], manifest)
    if seed is not None:
        table = draw_validation(table, seed, manifest, (negative, positive))
    table["target"] = (table["label"] == positive).astype(np.int64)
    table["image_file"] = [image_file for image_file, _, _ in files]
    table["mask_file"] = pd.Series([mask_file for _, mask_file, _ in files], index=table.index, dtype=object)
    table["twin_file"] = pd.Series([twin_file for _, _, twin_file in files], index=table.index, dtype=object)
    return table


@dataclass
class ImageSet:
    """Images of one split, ready for a model."""

    images: torch.Tensor  # float32 (N, C, H, W) in [-1, 1]
    labels: torch.Tensor  # int64 (N,) 0/1
    masks: torch.Tensor  # bool (N, H, W); all False where there is no mask
    has_mask: torch.Tensor  # bool (N,)
    ids: list[str]  # the manifest's 'path' values
    rows: torch.Tensor  # int64 (N,) 0-based data-row index in the manifest
    # Healthy twins (see TWIN_COLUMN) like images, all zeros where an image has none; None where no image
    # has one (most data), so a large set without twins holds no second copy of its images' size.
    twins: torch.Tensor | None = None
    has_twin: torch.Tensor | None = None  # bool (N,); left out, no image has a twin

    def __post_init__(self):
        if self.has_twin is None:
            self.has_twin = torch.zeros(len(self.labels), dtype=torch.bool)
        if self.has_twin.any() and self.twins is None:
            raise ValueError("an ImageSet whose has_twin marks images needs their twins")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index) -> "ImageSet":
        """The images picked by a boolean mask or an index tensor/sequence."""
        index = torch.as_tensor(index)
        if index.dtype == torch.bool:
            index = index.nonzero().flatten()
        index = index.long()
        return ImageSet(self.images[index], self.labels[index], self.masks[index], self.has_mask[index],
                        [self.ids[i] for i in index.tolist()], self.rows[index],
                        None if self.twins is None else self.twins[index], self.has_twin[index])


# --- reading image files -----------------------------------------------------------------

# pictures, DICOM and NIfTI (medxgan.data.medical_formats); ".nii.gz" is why names are matched by ending
IMAGE_SUFFIXES = PICTURE_SUFFIXES + DICOM_SUFFIXES + NIFTI_SUFFIXES


def is_image_name(path: Path) -> bool:
    return path.name.lower().endswith(IMAGE_SUFFIXES)


def image_stem(path: Path) -> str:
    """The name without its image suffix (scan.nii.gz -> scan; a volume's slice scan.nii.gz#slice=7
    -> scan_slice007, scan.nii.gz#axis=0,slice=7 -> scan_axis0_slice007)."""
    part = volume_slice(path)
    if part is not None:
        axis = "" if part.axis == DEFAULT_SLICE_AXIS else f"_axis{part.axis}"
        return f"{image_stem(part.file)}{axis}_slice{part.index:03d}"
    name = path.name
    return next((name[:-len(s)] for s in IMAGE_SUFFIXES if name.lower().endswith(s)), path.stem)


def open_image(file: Path, where: str, what: str = "image") -> Image.Image:
    """Read an image (or mask) file, the one way every step does: a PIL image in mode L or RGB
    (8-bit files, exactly as stored) or F (deeper files, as floats on the 8-bit scale 0..255).

    - 16-bit greyscale (PIL modes I;16, I;16B, I;16L, and I with values in 0..65535, as 16-bit
      PNGs open) is scaled by its bit depth: 0..65535 onto 0..255, so 65535 is white and a 12-bit
      image stored in 16 bits stays dark; it is not clipped as PIL's own conversion to L clips it.
    - Mode I with negative values or values beyond 16 bits (int16 or int32 slices), and float (F)
      images, are windowed to the image's own min..max; a constant one reads as black.
    - RGBA and LA are composited onto black: a pixel's colour is scaled by its opacity.
    - Palette (P, PA) images are converted through their palette (and transparency); other modes
      (1, CMYK, ...) as PIL converts them to L or RGB.
    - An EXIF orientation tag (a phone's or scanner's JPEG) is applied, so the image stands as shown.
    - A file with several frames (GIF, TIFF) is refused: which frame is meant is the user's choice.
    - DICOM and NIfTI files are read by `medxgan.data.medical_formats` (windowed, as mode F).
    - An image smaller than MIN_IMAGE_SIDE pixels on either side is refused.

    Every problem is a ManifestError naming `where` and the file.
    """
    try:
        pixels = _read_medical(file) if is_medical(file) else _read_picture(file)
    except (*READ_ERRORS, MedicalFormatError) as err:
        raise ManifestError(f"{where}: cannot read {what} {file}: {err}") from err
    if min(pixels.size) < MIN_IMAGE_SIDE:
        raise ManifestError(f"{where}: {what} {file} is {pixels.width}x{pixels.height} pixels; "
                            f"at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} are needed")
    return pixels


def _read_picture(file: Path) -> Image.Image:
    with Image.open(file) as image:
        frames = getattr(image, "n_frames", 1)
        if frames > 1:
            raise ValueError(f"it has {frames} frames; medxgan reads one image per file: save the frame you "
                             "want on its own")
        image.load()
        return _standard_mode(ImageOps.exif_transpose(image))


def _read_medical(file: Path) -> Image.Image:
    """A DICOM or NIfTI image as mode F on the 8-bit scale, like a deep greyscale picture."""
    return unit_image(read_medical(file))


def _standard_mode(image: Image.Image) -> Image.Image:
    """`image` in mode L, RGB or F (see `open_image`)."""
    if image.mode in ("P", "PA"):
        has_alpha = image.mode == "PA" or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
    if image.mode in ("LA", "RGBA"):
        return _onto_black(image)
    if image.mode in DEEP_GREY_MODES:
        return _deep_grey(image)
    if image.mode in ("L", "RGB"):
        return image
    return image.convert("RGB" if len(image.getbands()) >= 3 else "L")


def _onto_black(image: Image.Image) -> Image.Image:
    """An LA or RGBA image composited onto black: what is transparent carries no anatomy."""
    colour = image.mode[:-1]
    black = Image.new(colour, image.size, 0)
    black.paste(image.convert(colour), mask=image.getchannel("A"))
    return black


def _deep_grey(image: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit or float grey image as mode F on the 8-bit scale 0..255."""
    values = np.asarray(image, dtype=np.float64)
    low, high = values.min(), values.max()
    if image.mode != "F" and low >= 0 and high <= SIXTEEN_BIT_MAX:
        unit = values / SIXTEEN_BIT_MAX
    elif high > low:
        unit = (values - low) / (high - low)
    else:
        unit = np.zeros_like(values)
    return Image.fromarray((unit * PIXEL_MAX).astype(np.float32))


def as_grey(image: Image.Image) -> Image.Image:
    """An image from `open_image` with one channel (F stays F, keeping its depth)."""
    return image if image.mode == "F" else image.convert("L")


def resize_pixels(image: Image.Image, size: int, channels: int) -> Image.Image:
    """An image from `open_image` resized (bilinear) to size x size with `channels` channels; mode F
    stays F (grey: resized as floats, so a deep image keeps its precision) for the caller to repeat."""
    if image.mode != "F":
        image = image.convert(IMAGE_MODES[channels])
    return image.resize((size, size), Image.Resampling.BILINEAR)


def load_image(file: Path, where: str, image_size: int, channels: int, what: str = "image") -> np.ndarray:
    """(channels, image_size, image_size) float32 in [-1, 1], read by `open_image`."""
    return network_input(open_image(file, where, what), image_size, channels)


def unit_image(values: np.ndarray) -> Image.Image:
    """A greyscale array in [0, 1] (a DICOM or NIfTI image) as `open_image` gives it: mode F, 0..255."""
    return Image.fromarray((values * PIXEL_MAX).astype(np.float32))


def network_input(image: Image.Image, image_size: int, channels: int) -> np.ndarray:
    """An image from `open_image` as (channels, image_size, image_size) float32 in [-1, 1]."""
    pixels = resize_pixels(image, image_size, channels)
    array = np.asarray(pixels, dtype=np.float32) / HALF_PIXEL_RANGE - 1
    if array.ndim == 2:
        return np.repeat(array[None], channels, axis=0)  # grey: one plane, or repeated for RGB
    return array.transpose(2, 0, 1)


def load_mask(file: Path, where: str, image_size: int) -> np.ndarray:
    """(image_size, image_size) bool, True where the mask is non-zero."""
    grey = as_grey(open_image(file, where, "mask"))
    levels = np.unique(np.asarray(grey))
    if len(levels) > MAX_MASK_LEVELS:
        raise ManifestError(f"{where}: mask {file} is not binary: it has {len(levels)} grey levels")
    return np.asarray(grey.resize((image_size, image_size), Image.Resampling.NEAREST)) > 0


def _pixel_size(file: Path, where: str, what: str) -> tuple[int, int]:
    """(width, height) as read, from a picture's header without decoding its pixels."""
    if is_medical(file):
        return open_image(file, where, what).size
    try:
        with Image.open(file) as image:
            return image.size
    except READ_ERRORS as err:
        raise ManifestError(f"{where}: cannot read {what} {file}: {err}") from err


def check_twin_size(twin_file: Path, image_file: Path, where: str) -> None:
    """A healthy twin is its image without the lesion, so it must have the image's pixel size: a
    twin resized from another size would differ everywhere, not only where the lesion is."""
    twin_width, twin_height = _pixel_size(twin_file, where, "healthy twin")
    width, height = _pixel_size(image_file, where, "image")
    if (twin_width, twin_height) != (width, height):
        raise ManifestError(f"{where}: column {TWIN_COLUMN!r}: healthy twin {twin_file} is {twin_width}x{twin_height} "
                            f"pixels, its image {image_file} is {width}x{height}; a twin must be the same image "
                            "without the lesion")


def load_twin(twin_file: Path, image_file: Path, where: str, image_size: int, channels: int) -> np.ndarray:
    """A healthy twin, checked against its image's size and read exactly as images are."""
    check_twin_size(twin_file, image_file, where)
    return load_image(twin_file, where, image_size, channels, "healthy twin")


def load_split(manifest: str | Path, split: str, negative: str, positive: str, image_size: int,
               channels: int, label: str | None = None, positions: slice | None = None,
               seed: int | None = None) -> ImageSet:
    """Load one split's images (and masks and healthy twins) resized to image_size and scaled to [-1, 1].

    label None keeps both classes; 'positive' or 'negative' keeps one. `positions` keeps a slice of
    the chosen rows (one chunk of a sharded step): only those images are read. `seed` as in
    `read_manifest`.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; splits are {', '.join(SPLITS)}")
    if label is not None and label not in LABEL_CHOICES:
        raise ValueError(f"label must be None or one of {', '.join(LABEL_CHOICES)}, got {label!r}")
    if channels not in IMAGE_MODES:
        raise ValueError(f"channels must be one of {sorted(IMAGE_MODES)}, got {channels}")
    table = read_manifest(manifest, negative, positive, seed)
    chosen = table[table["split"] == split]
    if label is not None:
        chosen = chosen[chosen["target"] == int(label == "positive")]
    if chosen.empty:
        which = f"split {split!r}" + (f" with {label} label" if label else "")
        raise ManifestError(f"{manifest}: no rows in {which}")
    if positions is not None:
        chosen = chosen.iloc[positions]

    images, masks, twins = [], [], []
    blank_mask = np.zeros((image_size, image_size), dtype=bool)
    no_twin = np.zeros((channels, image_size, image_size), dtype=np.float32)
    for row in tqdm(chosen.itertuples(), total=len(chosen), desc=f"loading {split}", unit="image",
                    disable=len(chosen) < PROGRESS_MIN_IMAGES):
        where = f"{manifest}, line {row.line}"
        images.append(load_image(row.image_file, where, image_size, channels))
        masks.append(blank_mask if row.mask_file is None else load_mask(row.mask_file, where, image_size))
        twins.append(no_twin if row.twin_file is None
                     else load_twin(row.twin_file, row.image_file, where, image_size, channels))
    has_twin = chosen["twin_file"].notna().to_numpy()
    return ImageSet(
        images=torch.from_numpy(np.stack(images)),
        labels=torch.tensor(chosen["target"].to_numpy(), dtype=torch.int64),
        masks=torch.from_numpy(np.stack(masks)),
        has_mask=torch.tensor(chosen["mask_file"].notna().to_numpy(), dtype=torch.bool),
        ids=chosen["path"].tolist(),
        rows=torch.tensor(chosen.index.to_numpy(), dtype=torch.int64),
        twins=torch.from_numpy(np.stack(twins)) if has_twin.any() else None,
        has_twin=torch.tensor(has_twin, dtype=torch.bool),
    )


def write_manifest(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write the manifest columns of `df` (and only those, optional ones where `df` has them) atomically."""
    missing = [column for column in MANIFEST_COLUMNS if column not in df.columns]
    if missing:
        raise ValueError(f"cannot write manifest {path}: missing column(s) {', '.join(missing)}")
    optional = [column for column in OPTIONAL_COLUMNS if column in df.columns]
    with atomic_path(path) as tmp:
        df.loc[:, [*MANIFEST_COLUMNS, *optional]].to_csv(tmp, index=False)
