"""Brain slices with real anatomy, for judging the methods on data the built-in phantoms do not contain.

Each image is an axial slice of the MNI152 2009a T1 template (the ICBM average brain that nilearn
installs with itself; read with nibabel, nothing is downloaded), in a pose, contrast and coil bias
of its own. A positive carries a lesion of a model the built-in phantoms do not use and no setting
was chosen on: a lobulated blob, brighter than the tissue it lies in, with a soft edge. As with the
phantoms, every positive comes with its mask and its healthy twin: the same slice, pose, bias and
noise without the lesion.

Every image shares one anatomy, the template's: only the slice, the pose and the lesion vary, so
this judges how the methods find a lesion on real tissue contrast, not how they generalise across
patients.
"""

from __future__ import annotations

import importlib.resources
from functools import lru_cache

import numpy as np
from PIL import Image
from scipy import ndimage

from medxgan.config import ConfigError

TEMPLATE_PACKAGE = "nilearn"
TEMPLATE_FOLDER = ("datasets", "data")
T1_FILE = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
TEMPLATE_MAX = 255.0  # the template's intensity scale
BRAIN_LEVEL = 5.0  # template voxels above this are brain (the template is skull-stripped)
TISSUE_TOP = 0.75  # the brightest tissue's intensity: headroom for a bright lesion below 1

SLICES = (50, 126)  # axial slices (1 mm) with at least about 13,000 mm^2 of brain, upper bound exclusive
ROTATION_DEG = 10.0
SCALE = (0.9, 1.05)  # of the slice's square field of view
SHIFT = 0.05  # of the image side
GAMMA = (0.8, 1.25)  # contrast: intensity ** gamma
BIAS = 0.08  # multiplicative coil inhomogeneity
BIAS_CELLS = 3
NOISE_SIGMA = 0.015

LESION_RADIUS = (0.06, 0.11)  # of the image side
LESION_ASPECT = (0.6, 1.0)  # short over long axis
LESION_CONTRAST = (0.2, 0.4)  # added to the tissue's intensity (the image spans [0, 1])
LESION_ROUGHNESS = 0.25  # lobulation: smooth noise added to the lesion's normalised radius
LESION_ROUGHNESS_CELLS = 6
LESION_EDGE = 0.3  # width of the soft edge, in units of the lesion's radius
LESION_MARGIN = 0.5  # the centre lies at least this many radii inside the brain
MASK_LEVEL = 0.5  # the mask: where the lesion's blending weight reaches this


@lru_cache(maxsize=1)
def template_volume() -> np.ndarray:
    """The T1 template, (x, y, z) at 1 mm, float32 on the template's 0..255 scale."""
    import nibabel

    try:
        folder = importlib.resources.files(TEMPLATE_PACKAGE).joinpath(*TEMPLATE_FOLDER)
    except ModuleNotFoundError:
        # a setup the config asks for and this environment lacks: `medxgan prepare` says so in one line
        raise ConfigError(f"phantom kind template-mri reads the MNI152 template installed with {TEMPLATE_PACKAGE}, "
                          "which is missing: pip install -e '.[template]'") from None
    with importlib.resources.as_file(folder / T1_FILE) as path:
        return np.asarray(nibabel.load(path).get_fdata(), dtype=np.float32)


def _square_slice(z: int) -> np.ndarray:
    """Axial slice z, anterior up, padded to a square, on [0, 1]."""
    picture = template_volume()[:, :, z].T[::-1] / TEMPLATE_MAX
    side = max(picture.shape)
    padded = np.zeros((side, side), np.float32)
    top, left = (side - picture.shape[0]) // 2, (side - picture.shape[1]) // 2
    padded[top:top + picture.shape[0], left:left + picture.shape[1]] = picture
    return padded


def _posed(picture: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """The slice shrunk to size x size (area-averaged, no aliasing), then rotated, scaled, shifted and
    maybe mirrored about the midline."""
    small = np.asarray(Image.fromarray(picture).resize((size, size), Image.Resampling.BOX), np.float32)
    angle = np.deg2rad(rng.uniform(-ROTATION_DEG, ROTATION_DEG))
    scale = rng.uniform(*SCALE)
    mirror = -1.0 if rng.random() < 0.5 else 1.0
    # output pixel -> input pixel, about the image's centre
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    matrix = rotation @ np.diag([1.0, mirror]) / scale
    centre = (size - 1) / 2
    shift = rng.uniform(-SHIFT, SHIFT, 2) * size
    offset = centre - matrix @ (np.full(2, centre) + shift)
    return ndimage.affine_transform(small, matrix, offset, order=1, mode="constant", cval=0.0)


def _smooth_noise(rng: np.random.Generator, cells: int, size: int) -> np.ndarray:
    """A smooth random field of unit scale: normal values on a cells x cells grid, cubically upsampled."""
    return ndimage.zoom(rng.standard_normal((cells, cells)), size / cells, order=3)[:size, :size]


def _lesion(rng: np.random.Generator, brain: np.ndarray) -> np.ndarray:
    """The lesion's blending weight in [0, 1], its centre inside the brain."""
    size = brain.shape[0]
    radius = rng.uniform(*LESION_RADIUS) * size
    inner = ndimage.distance_transform_edt(brain) >= LESION_MARGIN * radius + 1
    candidates = np.argwhere(inner if inner.any() else brain)
    cy, cx = candidates[rng.integers(len(candidates))]
    angle, aspect = rng.uniform(0, np.pi), rng.uniform(*LESION_ASPECT)
    y, x = np.mgrid[:size, :size].astype(np.float32)
    along = (x - cx) * np.cos(angle) + (y - cy) * np.sin(angle)
    across = -(x - cx) * np.sin(angle) + (y - cy) * np.cos(angle)
    level = np.hypot(along / radius, across / (aspect * radius))
    level = level + LESION_ROUGHNESS * _smooth_noise(rng, LESION_ROUGHNESS_CELLS, size)
    return np.clip((1 - level) / LESION_EDGE + 0.5, 0.0, 1.0) * brain


def template_mri(rng: np.random.Generator, size: int, positive: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(image, mask, healthy twin or None) for one draw: images in [0, 1], the mask boolean."""
    z = int(rng.integers(*SLICES))
    picture = np.clip(_posed(_square_slice(z), rng, size), 0.0, 1.0)
    brain = picture > BRAIN_LEVEL / TEMPLATE_MAX
    picture = TISSUE_TOP * picture ** rng.uniform(*GAMMA)
    bias = 1 + BIAS * _smooth_noise(rng, BIAS_CELLS, size)
    noise = rng.normal(0.0, NOISE_SIGMA, (size, size))
    weight = _lesion(rng, brain) if positive else np.zeros((size, size))
    lesion = rng.uniform(*LESION_CONTRAST) * weight

    def finish(tissue: np.ndarray) -> np.ndarray:
        # the twin is finished from the same bias and noise as the image: the two differ only by the lesion
        return np.clip(tissue * bias + noise * brain, 0.0, 1.0).astype(np.float32)

    image = finish(picture + lesion)
    return image, weight >= MASK_LEVEL, finish(picture) if positive else None
