"""brain-figshare: Cheng et al.'s T1-weighted contrast-enhanced brain tumour slices (figshare
article 1512427), with tumour masks and patient IDs.

The article holds four zips of MATLAB v7.3 (HDF5) files, one slice each: `cjdata/label`
(1 meningioma, 2 glioma, 3 pituitary tumour), `cjdata/PID`, `cjdata/image` (int16) and
`cjdata/tumorMask`. Images are windowed to 8 bits per slice; splits are drawn by patient, so
no patient's slices are on both sides.

Every slice shows a tumour: there is no normal class. The negatives are borrowed from another
prepared dataset (`source.negatives_from`, brain-sartaj's no_tumor images in the paper config),
keeping that dataset's splits.
"""

from pathlib import Path

import numpy as np
from PIL import Image

from medxgan.data.download import DataSourceError, FigshareArticleRoute, FigshareRoute, extract_zip
from medxgan.data.preparation import Collected, Record, drop
from medxgan.files import progress

NAME = "brain-figshare"
ARTICLE, VERSION = 1512427, 5
CLASS_NAMES = {1: "meningioma", 2: "glioma", 3: "pituitary"}
# Percentiles of a slice's intensities mapped to 0 and 255: robust to a few very bright voxels.
WINDOW_PERCENTILES = (0.5, 99.5)
PIXEL_MAX = 255
DEDUPLICATE = False
NEEDS_NEGATIVES_FROM = True
ROUTES = {"figshare": FigshareRoute(ARTICLE, VERSION), "figshare-article": FigshareArticleRoute(ARTICLE, VERSION)}
ROUTE_ORDER = ("figshare", "figshare-article")


def window(image: np.ndarray) -> np.ndarray:
    """int16 intensities to uint8 between the slice's WINDOW_PERCENTILES."""
    low, high = np.percentile(image, WINDOW_PERCENTILES)
    if high <= low:
        return np.zeros(image.shape, dtype=np.uint8)
    scaled = (image.astype(np.float64) - low) / (high - low)
    return np.round(np.clip(scaled, 0, 1) * PIXEL_MAX).astype(np.uint8)


def _matlab_text(dataset) -> str:
    """A MATLAB char array as HDF5 stores it: one uint16 character code per element."""
    return "".join(map(chr, np.asarray(dataset).flatten()))


def _open_mat(file: Path):
    """A MATLAB v7.3 file (HDF5) for reading; h5py comes with the `data` extra."""
    try:
        import h5py
    except ImportError:
        raise DataSourceError("reading figshare's .mat slices needs h5py: pip install 'medxgan[data]'") from None
    return h5py.File(file, "r")


def read_slice(record: Record) -> tuple[Image.Image, Image.Image]:
    # MATLAB writes arrays column-major: HDF5 holds the transpose of the image
    with _open_mat(record.source_file) as mat:
        image = np.asarray(mat["cjdata/image"]).T
        mask = np.asarray(mat["cjdata/tumorMask"]).T
    return Image.fromarray(window(image)), Image.fromarray((mask > 0).astype(np.uint8) * PIXEL_MAX)


def _unpack_inner_zips(root: Path) -> None:
    """The whole-article zip holds the four zips of slices: unpack those too."""
    for inner in sorted(root.rglob("*.zip")):
        extract_zip(inner, inner.with_suffix(""))


def collect(root: Path) -> Collected:
    _unpack_inner_zips(root)
    slices = sorted((p for p in root.rglob("*.mat") if p.stem.isdigit()), key=lambda p: int(p.stem))
    if not slices:
        raise DataSourceError(f"{root}: no slice files (<number>.mat) in the downloaded files")
    records, dropped = [], []
    for file in progress(slices, desc="reading labels", unit="slice"):
        try:
            with _open_mat(file) as mat:
                label, patient = int(np.asarray(mat["cjdata/label"]).item()), _matlab_text(mat["cjdata/PID"])
        except (OSError, KeyError, ValueError) as err:
            dropped.append(drop(Record(file, True, "unknown"), "unreadable", str(err)))
            continue
        if label not in CLASS_NAMES:
            dropped.append(drop(Record(file, True, str(label)), "unknown label", f"cjdata.label = {label}"))
            continue
        records.append(Record(file, True, CLASS_NAMES[label], patient_id=patient, loader=read_slice))
    return Collected(root, records, dropped)
