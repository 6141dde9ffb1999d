"""DICOM and NIfTI files as one 2-D greyscale image each, shown as a viewer shows them.

DICOM (pydicom): the stored values go through the modality LUT (Rescale Slope and Intercept, as
Hounsfield units for CT), then through the file's own window (Window Center and Width, the DICOM
linear function) or, where the file names none, a percentile window over the image's own values;
MONOCHROME1 images, where a high value is dark, are inverted.

NIfTI (nibabel): a 2-D image, or a volume whose other axes have one voxel, windowed by its header's
cal_min/cal_max where set, else by the same percentile window. Arrays are stored (x, y), x to the
patient's left in radiological order: the image is shown transposed, y upwards.

A manifest names one 2-D image per file, so a file with several frames or slices is refused there
with a message; `explain-images` explains a NIfTI volume slice by slice (`nifti_slices`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")  # what PIL reads
DICOM_SUFFIXES = (".dcm", ".dicom")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_MAGIC_OFFSET = 128  # a DICOM Part 10 file: a 128-byte preamble, then "DICM"
PERCENTILE_WINDOW = (0.5, 99.5)  # where no window is stored: the middle 99% of the image's values


class MedicalFormatError(ValueError):
    """A DICOM or NIfTI file that cannot be read as one 2-D greyscale image."""


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
    return file.name.lower().endswith(NIFTI_SUFFIXES)


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
    values = _nifti_unit(file)
    planes = [n for n in values.shape if n > 1]
    if len(planes) != 2:
        raise MedicalFormatError(f"it holds an array of shape {values.shape}; a manifest names one 2-D image per "
                                 "file: export the slices you want as 2-D files (explain-images takes volumes)")
    return _shown(values.reshape(planes))


def nifti_slices(file: Path, axis: int, slices: slice = slice(None)) -> list[tuple[int, np.ndarray]]:
    """(index, image in [0, 1]) of the volume's slices across voxel axis `axis` (0, 1 or 2), those
    `slices` picks; one window for the whole volume, so its slices compare. A 2-D file is one slice."""
    unit = _nifti_unit(file)
    planes = [n for n in unit.shape if n > 1]
    if len(planes) == 2:
        return [(0, _shown(unit.reshape(planes)))]
    if unit.ndim != 3:
        raise MedicalFormatError(f"it holds an array of shape {unit.shape}; explain-images reads 2-D images and "
                                 "3-D volumes")
    picked = range(unit.shape[axis])[slices]
    if not picked:
        raise MedicalFormatError(f"its axis {axis} has {unit.shape[axis]} slices, none in {slices.start}:{slices.stop}")
    return [(k, _shown(np.take(unit, k, axis=axis))) for k in picked]


def _nifti_unit(file: Path) -> np.ndarray:
    """The voxel values windowed onto [0, 1]: by the header's cal_min/cal_max where set, else by the
    percentile window over all of them."""
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
