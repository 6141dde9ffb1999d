"""DICOM and NIfTI files as one 2-D greyscale image each, shown as a viewer shows them.

DICOM (pydicom): the stored values go through the modality LUT (Rescale Slope and Intercept, as
Hounsfield units for CT), then through the file's own window (Window Center and Width, the DICOM
linear function) or, where the file names none, a percentile window over the image's own values;
MONOCHROME1 images, where a high value is dark, are inverted.

NIfTI (nibabel): a 2-D image, or a volume whose other axes have one voxel, windowed by its header's
cal_min/cal_max where set, else by the same percentile window. Arrays are stored (x, y), x to the
patient's left in radiological order: the image is shown transposed, y upwards.

One slice of a NIfTI volume is named FILE#slice=K (across voxel axis 2, the axial one for an
image stored in RAS order) or FILE#axis=A,slice=K: a manifest lists slices by these names,
`import-folder` writes one row per slice of each volume, and `explain-images` explains a volume
slice by slice (`nifti_slices`) and names its rows so. A slice is windowed with its whole volume,
so the slices of one volume compare. A DICOM file with several frames is refused with a message.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")  # what PIL reads
DICOM_SUFFIXES = (".dcm", ".dicom")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_MAGIC_OFFSET = 128  # a DICOM Part 10 file: a 128-byte preamble, then "DICM"
PERCENTILE_WINDOW = (0.5, 99.5)  # where no window is stored: the middle 99% of the image's values
DEFAULT_SLICE_AXIS = 2
SLICE_NAME = re.compile(r"^(?P<file>.+\.nii(?:\.gz)?)#(?:axis=(?P<axis>[012]),)?slice=(?P<index>\d+)$", re.IGNORECASE)
SLICE_NAME_FORMS = "VOLUME.nii[.gz]#slice=K or VOLUME.nii[.gz]#axis=A,slice=K (A: 0, 1 or 2)"


class MedicalFormatError(ValueError):
    """A DICOM or NIfTI file that cannot be read as one 2-D greyscale image."""


@dataclass(frozen=True)
class VolumeSlice:
    """Slice `index` of the NIfTI volume `file`, across voxel axis `axis`."""

    file: Path
    axis: int
    index: int

    @property
    def name(self) -> str:
        return slice_name(self.file, self.axis, self.index)


def slice_name(file: Path | str, axis: int, index: int) -> str:
    """The name of one slice of a volume: FILE#slice=K across the default axis, else FILE#axis=A,slice=K."""
    return f"{file}#slice={index}" if axis == DEFAULT_SLICE_AXIS else f"{file}#axis={axis},slice={index}"


def volume_slice(name: Path | str) -> VolumeSlice | None:
    """The slice a name like FILE#slice=K names; None for a name that names a whole file."""
    match = SLICE_NAME.match(str(name))
    if match is None:
        return None
    return VolumeSlice(Path(match["file"]), int(match["axis"] or DEFAULT_SLICE_AXIS), int(match["index"]))


def file_read(name: Path | str) -> Path:
    """The file a name reads: the volume of a slice's name, else the named file itself."""
    part = volume_slice(name)
    return part.file if part else Path(name)


def is_dicom(file: Path) -> bool:
    """By its suffix, or, for a file without a picture's suffix (scanners often write none), by the
    DICM marker: a picture is not opened twice."""
    if file.name.lower().endswith(DICOM_SUFFIXES):
        return True
    if file.name.lower().endswith(PICTURE_SUFFIXES):
        return False
    try:
        with open(file, "rb") as handle:
            handle.seek(DICOM_MAGIC_OFFSET)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def is_nifti(file: Path) -> bool:
    """A NIfTI file, or a slice of one (FILE#slice=K)."""
    return file.name.lower().endswith(NIFTI_SUFFIXES) or volume_slice(file) is not None


def is_medical(file: Path) -> bool:
    return is_nifti(file) or is_dicom(file)


def read_medical(file: Path) -> np.ndarray:
    """A DICOM or NIfTI file's image as float64 in [0, 1] (0 black), shape (H, W)."""
    return read_nifti(file) if is_nifti(file) else read_dicom(file)


def read_dicom(file: Path) -> np.ndarray:
    import pydicom
    from pydicom.pixels import apply_modality_lut

    try:
        dataset = pydicom.dcmread(file)
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
        if frames > 1:
            raise MedicalFormatError(f"it has {frames} frames; medxgan reads one 2-D image per file: export the "
                                     "frames you want as separate files")
        pixels = dataset.pixel_array
    except (pydicom.errors.InvalidDicomError, AttributeError, KeyError, RuntimeError, NotImplementedError) as error:
        raise MedicalFormatError(f"not a readable DICOM image ({error})") from error
    if pixels.ndim != 2:
        raise MedicalFormatError(f"its pixels have shape {pixels.shape} ({dataset.get('PhotometricInterpretation')}); "
                                 "medxgan reads greyscale DICOM")
    values = np.asarray(apply_modality_lut(pixels, dataset), dtype=np.float64)
    window = _stored_window(dataset)
    unit = _linear_window(values, *window) if window else _percentile_window(values)
    return 1.0 - unit if dataset.get("PhotometricInterpretation") == "MONOCHROME1" else unit


def _stored_window(dataset) -> tuple[float, float] | None:
    """(center, width) of the file's first window, or None where it stores none."""
    from pydicom.multival import MultiValue

    center, width = dataset.get("WindowCenter"), dataset.get("WindowWidth")
    if center is None or width is None:
        return None
    center, width = (float(v[0]) if isinstance(v, MultiValue) else float(v) for v in (center, width))
    return (center, width) if width >= 1 else None  # the standard requires a width of at least 1


def _linear_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1, the LINEAR VOI function, onto [0, 1]."""
    return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def _percentile_window(values: np.ndarray) -> np.ndarray:
    return _window(values, *np.percentile(values, PERCENTILE_WINDOW))


def _window(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """low..high onto [0, 1], clipped; all black where the window is empty (a constant image)."""
    if high <= low:
        return np.zeros_like(values)
    return np.clip((values - low) / (high - low), 0.0, 1.0)


def read_nifti(file: Path) -> np.ndarray:
    """A 2-D NIfTI image, or the slice of a volume that FILE#slice=K names."""
    part = volume_slice(file)
    if part is not None:
        return read_volume_slice(part)
    values = _nifti_unit(file)
    if _plane_shape(values.shape) is None:
        raise MedicalFormatError(f"it holds an array of shape {values.shape}; name one slice of it as "
                                 f"{SLICE_NAME_FORMS}")
    return _slice_image(values, DEFAULT_SLICE_AXIS, 0)


def read_volume_slice(part: VolumeSlice) -> np.ndarray:
    """The one slice FILE#slice=K names (slice 0 of a 2-D file is the file's image)."""
    unit = _nifti_unit(part.file)
    count = _slice_count(unit.shape, part.axis)
    if part.index >= count:
        raise MedicalFormatError(f"slice {part.index} is beyond the volume: its axis {part.axis} has {count} "
                                 f"slice(s) (0 to {count - 1})")
    return _slice_image(unit, part.axis, part.index)


def nifti_slice_count(file: Path, axis: int) -> int:
    """How many slices `nifti_slices` gives across `axis`, from the header alone: 1 for a 2-D image."""
    import nibabel

    try:
        shape = nibabel.load(file).shape
    except (nibabel.filebasedimages.ImageFileError, OSError, ValueError, EOFError) as error:
        raise MedicalFormatError(f"not a readable NIfTI image ({error})") from error
    return _slice_count(shape, axis)


def _plane_shape(shape: tuple[int, ...]) -> list[int] | None:
    """The two sides of an array that is one 2-D image (its other axes one voxel long); else None."""
    sides = [n for n in shape if n > 1]
    return sides if len(sides) == 2 else None


def _slice_count(shape: tuple[int, ...], axis: int) -> int:
    """The slices across `axis`: 1 for an array that is one 2-D image."""
    if _plane_shape(shape):
        return 1
    if len(shape) != 3:
        raise MedicalFormatError(f"it holds an array of shape {shape}; medxgan reads 2-D images and 3-D volumes")
    return shape[axis]


def _slice_image(unit: np.ndarray, axis: int, index: int) -> np.ndarray:
    """Slice `index` across `axis` as shown (an array that is one 2-D image is its only slice)."""
    plane = _plane_shape(unit.shape)
    return _shown(unit.reshape(plane) if plane else np.take(unit, index, axis=axis))


def nifti_slices(file: Path, axis: int, slices: slice = slice(None)) -> list[tuple[int, np.ndarray]]:
    """(index, image in [0, 1]) of the volume's slices across voxel axis `axis` (0, 1 or 2), those
    `slices` picks; one window for the whole volume, so its slices compare. A 2-D file is one slice,
    whatever `slices` picks."""
    unit = _nifti_unit(file)
    count = _slice_count(unit.shape, axis)
    if _plane_shape(unit.shape):
        return [(0, _slice_image(unit, axis, 0))]
    picked = range(count)[slices]
    if not picked:
        raise MedicalFormatError(f"its axis {axis} has {count} slices, none in {slices.start}:{slices.stop}")
    return [(k, _slice_image(unit, axis, k)) for k in picked]


def _nifti_unit(file: Path) -> np.ndarray:
    """The voxel values windowed onto [0, 1]: by the header's cal_min/cal_max where set, else by the
    percentile window over all of them. The last volume read is kept (read-only), so reading its
    slices one by one, as a manifest's rows do, decodes it once; a changed file is read again."""
    try:
        stat = Path(file).stat()
    except OSError as error:
        raise MedicalFormatError(f"not a readable NIfTI image ({error})") from error
    return _cached_nifti_unit(str(file), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=1)
def _cached_nifti_unit(file: str, _mtime_ns: int, _size: int) -> np.ndarray:
    unit = _read_nifti_unit(Path(file))
    unit.setflags(write=False)
    return unit


def _read_nifti_unit(file: Path) -> np.ndarray:
    import nibabel

    try:
        image = nibabel.load(file)
        values = np.asarray(image.dataobj, dtype=np.float64)
    except (nibabel.filebasedimages.ImageFileError, OSError, ValueError, EOFError) as error:
        raise MedicalFormatError(f"not a readable NIfTI image ({error})") from error
    low, high = float(image.header["cal_min"]), float(image.header["cal_max"])
    return _window(values, low, high) if high > low else _percentile_window(values)


def _shown(plane: np.ndarray) -> np.ndarray:
    """A 2-D (x, y) array as shown: rows top to bottom (y downwards), columns left to right."""
    return np.flipud(plane.T)
