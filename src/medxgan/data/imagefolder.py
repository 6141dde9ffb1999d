"""A user's own images in ImageFolder layout, imported into a manifest with one command:

    ROOT/train/<class>/<image>     ROOT/test/<class>/<image>
    ROOT/masks/train/<class>/<image stem>.<png|jpg|...>   (optional lesion masks, same names)

Two class folders are the task's negative and positive classes; any other class folder is left
out (listed in dropped.csv). Images in a class folder's subfolders belong to the class, as in
torchvision's ImageFolder; files that are not images are listed in dropped.csv; a class folder
without images stops the import. The validation split is drawn from train with the seed, stratified.

A NIfTI volume gives one image per slice across a chosen voxel axis (those in a chosen range), its
mask volume the slices' masks; a volume's slices are one patient, so they share a split.
"""

from __future__ import annotations

from pathlib import Path

from medxgan.data.download import DataSourceError
from medxgan.data.manifest import IMAGE_SUFFIXES, image_stem, is_image_name
from medxgan.data.medical_formats import DEFAULT_SLICE_AXIS, MedicalFormatError, is_nifti, nifti_slice_count, slice_name
from medxgan.data.preparation import Collected, PrepareOptions, Record, drop, prepare
from medxgan.data.sources.layout import is_junk, require_folders, subfolders
from medxgan.files import portable_path

SPLIT_FOLDERS = {"train": "train", "test": "test"}
MASKS = "masks"
NO_TEST_CARVING = 0.0  # the folder fixes the test split


def _mask_for(root: Path, image: Path) -> Path | None:
    relative = image.relative_to(root)
    folder = root / MASKS / relative.parent
    if not folder.is_dir():
        return None
    matches = [p for p in sorted(folder.iterdir()) if is_image_name(p) and image_stem(p) == image_stem(image)]
    return matches[0] if matches else None


def _images_in(file: Path, mask: Path | None, volume_name: str, slice_axis: int,
               slices: slice) -> list[tuple[Path, Path | None, str]]:
    """(image, mask, patient) of each image a file holds: the file itself, or a NIfTI volume's slices,
    whose patient is the volume's `volume_name`."""
    try:
        count = nifti_slice_count(file, slice_axis) if is_nifti(file) else 1
    except MedicalFormatError:
        count = 1  # preparing it names the error in dropped.csv
    if count == 1:
        return [(file, mask, "")]
    if mask is not None and not is_nifti(mask):
        raise DataSourceError(f"{mask}: the mask of NIfTI volume {file} must be a NIfTI volume of the same shape")
    return [(Path(slice_name(file, slice_axis, k)), mask and Path(slice_name(mask, slice_axis, k)), volume_name)
            for k in range(count)[slices]]


def collect_image_folder(root: Path, negative: str, positive: str, slice_axis: int = DEFAULT_SLICE_AXIS,
                         slices: slice = slice(None)) -> Collected:
    root = Path(root)
    require_folders(root, SPLIT_FOLDERS)
    records, dropped = [], []
    for folder_name, split in SPLIT_FOLDERS.items():
        folder = root / folder_name
        require_folders(folder, (negative, positive))
        for name in subfolders(folder):
            files = class_files(folder / name)
            if name in (negative, positive) and not any(is_image_name(file) for file in files):
                raise DataSourceError(f"{folder / name}: class folder {name!r} holds no image "
                                      f"({', '.join(IMAGE_SUFFIXES)})")
            for file in files:
                record = Record(file, name == positive, name, split, mask_file=_mask_for(root, file))
                if not is_image_name(file):
                    dropped.append(drop(record, "not an image file", file.suffix or "no suffix"))
                elif name in (negative, positive):
                    records += [Record(image, name == positive, name, split, mask, patient)
                                for image, mask, patient in _images_in(file, record.mask_file,
                                                                       file.relative_to(root).as_posix(),
                                                                       slice_axis, slices)]
                else:
                    dropped.append(drop(record, "class not in the task", f"{positive} vs {negative}"))
    return Collected(root, records, dropped)


def class_files(folder: Path) -> list[Path]:
    """Every file under a class folder, in its subfolders too (as torchvision's ImageFolder reads
    them), sorted, without macOS's resource forks."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and not is_junk(p.relative_to(folder)))


def import_folder(root: Path, negative: str, positive: str, out_dir: Path, image_size: int, channels: int,
                  val_fraction: float, seed: int, slice_axis: int = DEFAULT_SLICE_AXIS,
                  slices: slice = slice(None)) -> Path:
    """Prepare ROOT (ImageFolder layout) into out_dir; return the manifest's path."""
    options = PrepareOptions(image_size, channels, negative, positive, seed, val_fraction, NO_TEST_CARVING)
    return prepare(collect_image_folder(root, negative, positive, slice_axis, slices), options, out_dir,
                   {"source": {"source": "image folder", "location": portable_path(root)}})
