"""Procedural chest-radiograph and brain-MRI phantoms with ground-truth lesion masks.

Every phantom draws its anatomy from the generator first and its lesion afterwards, so one
seed with positive=True and with positive=False gives the same anatomy with and without the
lesion. Positives therefore differ from negatives only by the lesion, and a test can check
that the mask covers what the lesion changed. The same holds within one draw: every positive
comes with its healthy twin, the same picture and noise with the lesion left out, which is the
exact image a negative realisation G(z1, 0) should reach.

Geometry is expressed in a frame where the image spans [-1, 1] on both axes (y downwards);
a random pose (rotation, scale, shift) maps it onto the pixels, so every size draws the same
picture at a different resolution.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import pandas as pd
from PIL import Image

from medxgan.data.manifest import MANIFEST_COLUMNS, SPLITS, TWIN_COLUMN, write_manifest

Range = tuple[float, float]

# A lesion pixel belongs to the mask where the lesion's envelope (opacity) or the tumour's
# blending weight is above this fraction of its peak.
MASK_FRACTION = 0.5
# Lesion centres are resampled until they fall where the lesion region is at least this solid.
MIN_REGION_AT_CENTRE = 0.9
MAX_PLACEMENT_TRIES = 1000
PIXEL_LEVELS = 255

# Streams of SeedSequence entropy. A purpose tag keeps e.g. (seed, split) and
# (seed, split, 0) apart: SeedSequence pads short entropy with zeros.
IMAGE_STREAM = 1
ORDER_STREAM = 2

# --- chest radiograph ------------------------------------------------------------------
CXR_ROTATION_DEG = 6.0
CXR_SCALE: Range = (0.9, 1.06)
CXR_SHIFT = 0.06
CXR_BACKGROUND: Range = (0.02, 0.08)
CXR_BODY_LEVEL: Range = (0.5, 0.62)
CXR_BODY_HALF_WIDTH: Range = (0.86, 0.96)
CXR_BODY_CENTRE_V = 0.2
CXR_BODY_HALF_HEIGHT = 1.3
CXR_BODY_EDGE = 0.06
CXR_BODY_VERTICAL_GRADIENT: Range = (0.04, 0.1)  # the abdomen is denser than the upper chest
CXR_LUNG_CENTRE_U: Range = (0.34, 0.44)
CXR_LUNG_CENTRE_V: Range = (-0.08, 0.04)
CXR_LUNG_HALF_WIDTH: Range = (0.23, 0.3)
CXR_LUNG_HALF_HEIGHT: Range = (0.5, 0.62)
CXR_LUNG_TILT: Range = (0.04, 0.16)  # radians, apices lean towards the midline
CXR_LUNG_EDGE = 0.14
CXR_LUNG_DEPTH: Range = (0.3, 0.4)  # how much darker aerated lung is than soft tissue
CXR_HEART_CENTRE: tuple[Range, Range] = ((0.06, 0.16), (0.26, 0.36))
CXR_HEART_HALF_AXES: tuple[Range, Range] = ((0.24, 0.31), (0.2, 0.27))
CXR_HEART_TILT: Range = (-0.35, -0.1)
CXR_MEDIASTINUM_CENTRE_V = -0.45
CXR_MEDIASTINUM_HALF_AXES: tuple[Range, Range] = ((0.1, 0.14), (0.65, 0.75))
CXR_MEDIASTINUM_EDGE = 0.2
CXR_HEART_EXTRA: Range = (0.04, 0.14)  # heart and mediastinum level above the body level
CXR_RIB_COUNT = (7, 10)  # per lung, upper bound exclusive
CXR_RIB_THICKNESS: Range = (0.022, 0.032)
CXR_RIB_BRIGHTNESS: Range = (0.07, 0.13)
CXR_RIB_CURVATURE: Range = (1.4, 2.2)  # ribs arc downwards away from their highest point
CXR_RIB_PEAK_U = 0.2
CXR_RIB_FIELD_SCALE = 1.2  # ribs show over a slightly enlarged lung outline
CXR_RIB_BEHIND_HEART = 0.7  # fraction of rib contrast the heart hides
CXR_GRADIENT: Range = (0.0, 0.06)
CXR_HAZE = 0.03
CXR_HAZE_CELLS = 3
CXR_GAIN: Range = (0.9, 1.1)
CXR_NOISE: Range = (0.012, 0.03)
# ground-glass opacities
CXR_OPACITY_COUNT = (1, 4)  # upper bound exclusive
CXR_OPACITY_RADIUS: Range = (0.17, 0.3)  # outer radius; the mask reaches ~3/4 of it
CXR_OPACITY_CORE = 0.5  # flat top out to this fraction of the radius, then a smooth fall
CXR_OPACITY_ASPECT: Range = (0.7, 1.0)
CXR_OPACITY_BRIGHTNESS: Range = (0.26, 0.38)
CXR_OPACITY_TEXTURE = 0.3
CXR_OPACITY_TEXTURE_CELLS = 10
CXR_OPACITY_SITE = 0.65  # centres lie within this fraction of the lung's half axes

# --- brain MRI --------------------------------------------------------------------------
MRI_ROTATION_DEG = 15.0
MRI_SCALE: Range = (0.88, 1.04)
MRI_SHIFT = 0.06
MRI_BACKGROUND: Range = (0.0, 0.04)
MRI_HEAD_HALF_AXES: tuple[Range, Range] = ((0.7, 0.8), (0.82, 0.92))
MRI_HEAD_EDGE = 0.015
MRI_SKULL_LEVEL: Range = (0.75, 0.92)
MRI_SKULL_INNER: Range = (0.87, 0.91)  # skull ring inner edge, relative to the head outline
MRI_CSF_GAP = 0.035  # dark rim between skull and brain, relative to the head outline
MRI_CSF_LEVEL: Range = (0.06, 0.14)
MRI_BRAIN_EDGE = 0.02
MRI_GREY_LEVEL: Range = (0.4, 0.5)
MRI_WHITE_LEVEL: Range = (0.6, 0.7)
MRI_WHITE_EXTENT: Range = (0.7, 0.8)  # white matter reach, relative to the brain outline
MRI_GYRI = (6, 11)  # folds of the grey/white boundary, upper bound exclusive
MRI_GYRUS_DEPTH: Range = (0.03, 0.07)
MRI_GREY_WHITE_EDGE = 0.05
MRI_VENTRICLE_OFFSET_U: Range = (0.06, 0.1)
MRI_VENTRICLE_CENTRE_V: Range = (-0.08, 0.04)
MRI_VENTRICLE_HALF_AXES: tuple[Range, Range] = ((0.04, 0.07), (0.14, 0.22))
MRI_VENTRICLE_SPLAY: Range = (0.15, 0.4)  # radians; the frontal horns diverge
MRI_VENTRICLE_EDGE = 0.15
MRI_VENTRICLE_LEVEL: Range = (0.1, 0.2)
MRI_FISSURE_WIDTH = 0.015
MRI_FISSURE_DEPTH: Range = (0.15, 0.3)
MRI_FISSURE_START = 0.5  # the fissure shows beyond this fraction of the brain's half height
MRI_TISSUE_TEXTURE = 0.025
MRI_TISSUE_TEXTURE_CELLS = 8
MRI_BIAS = 0.08  # multiplicative coil inhomogeneity
MRI_BIAS_CELLS = 2
MRI_NOISE: Range = (0.012, 0.03)
# tumour
MRI_TUMOUR_RADIUS: Range = (0.12, 0.22)
MRI_TUMOUR_ASPECT: Range = (0.75, 1.0)
MRI_TUMOUR_LOBES = (3, 5)  # angular frequencies of the outline's lobulation
MRI_TUMOUR_LOBULATION = 0.08
MRI_TUMOUR_EDGE_PIXELS = 0.75  # soft edge half-width, in pixels
MRI_TUMOUR_RIM_LEVEL: Range = (0.84, 0.95)
MRI_TUMOUR_CORE_LEVEL: Range = (0.2, 0.3)
MRI_TUMOUR_CORE_FRACTION: Range = (0.3, 0.5)
MRI_TUMOUR_CORE_EDGE = 0.08
MRI_TUMOUR_MARGIN = 1.3  # keeps the tumour this many radii inside the brain outline
MRI_OEDEMA_EXTENT: Range = (1.45, 1.8)  # halo reach, in tumour radii
MRI_OEDEMA_LEVEL: Range = (0.08, 0.13)


@dataclass(frozen=True)
class Frame:
    """Anatomy-frame coordinates of every pixel centre."""

    u: np.ndarray
    v: np.ndarray
    pixel: float  # one pixel's width in frame units


@dataclass(frozen=True)
class Ellipse:
    centre_u: float
    centre_v: float
    half_u: float
    half_v: float
    angle: float = 0.0

    def _local(self, u, v):
        """Coordinates in the ellipse's own axes, scaled so the outline is the unit circle."""
        cos, sin = np.cos(self.angle), np.sin(self.angle)
        du, dv = u - self.centre_u, v - self.centre_v
        return (cos * du + sin * dv) / self.half_u, (-sin * du + cos * dv) / self.half_v

    def radius(self, u, v):
        """Normalised radius: below 1 inside, 1 on the outline."""
        return np.hypot(*self._local(u, v))

    def polar(self, u, v):
        """Normalised radius and angle around the centre, in the ellipse's own axes."""
        along, across = self._local(u, v)
        return np.hypot(along, across), np.arctan2(across, along)

    def point(self, radius: float, angle: float) -> tuple[float, float]:
        """Frame coordinates of the point at a normalised radius and angle."""
        along = radius * np.cos(angle) * self.half_u
        across = radius * np.sin(angle) * self.half_v
        cos, sin = np.cos(self.angle), np.sin(self.angle)
        return self.centre_u + cos * along - sin * across, self.centre_v + sin * along + cos * across

    def inside(self, u, v, softness: float):
        """1 inside, 0 outside, with a smooth edge `softness` wide in normalised radius."""
        return smoothstep(1 + softness, 1 - softness, self.radius(u, v))


@dataclass(frozen=True)
class Anatomy:
    """A phantom's lesion-free picture and where a lesion may go."""

    picture: np.ndarray  # float32 (size, size), noise-free
    noise: np.ndarray  # float32 (size, size), added after any lesion
    region: np.ndarray  # float32 (size, size) in [0, 1]: lung fields or brain
    region_at: Callable  # (u, v) -> region value, for placing lesion centres
    sites: tuple[Ellipse, ...]  # lesion centres are drawn inside one of these
    frame: Frame


def smoothstep(edge0, edge1, x):
    """0 at edge0, 1 at edge1, smooth in between (edge0 > edge1 gives a falling step)."""
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _uniform(rng: np.random.Generator, bounds: Range) -> float:
    return float(rng.uniform(*bounds))


def _random_frame(rng, size: int, rotation_deg: float, scale: Range, shift: float) -> Frame:
    """Pixel centres mapped into a randomly rotated, scaled and shifted anatomy frame."""
    centres = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    x, y = np.meshgrid(centres, centres)
    angle = np.deg2rad(rng.uniform(-rotation_deg, rotation_deg))
    zoom = _uniform(rng, scale)
    dx, dy = rng.uniform(-shift, shift, size=2)
    cos, sin = np.cos(angle), np.sin(angle)
    u = (cos * (x - dx) + sin * (y - dy)) / zoom
    v = (-sin * (x - dx) + cos * (y - dy)) / zoom
    return Frame(u.astype(np.float32), v.astype(np.float32), pixel=2 / (size * zoom))


def _smooth_field(rng, size: int, cells: int) -> np.ndarray:
    """Zero-mean, unit-variance-ish random field with about `cells` bumps across the image.

    The coarse grid does not depend on `size`, so the field is the same at every resolution.
    """
    coarse = rng.standard_normal((cells + 1, cells + 1))
    position = np.linspace(0, cells, size)
    low = np.minimum(position.astype(int), cells - 1)
    t = smoothstep(0.0, 1.0, position - low)  # smooth interpolation hides the coarse grid
    rows = coarse[low] * (1 - t)[:, None] + coarse[low + 1] * t[:, None]
    return (rows[:, low] * (1 - t) + rows[:, low + 1] * t).astype(np.float32)


def _linear_gradient(rng, frame: Frame, strength: Range) -> np.ndarray:
    direction = rng.uniform(0, 2 * np.pi)
    return _uniform(rng, strength) * (np.cos(direction) * frame.u + np.sin(direction) * frame.v)


def _sample_centre(rng, anatomy: Anatomy, site_fraction: float, margin: float = 0.0):
    """A random point inside one of the anatomy's sites where the lesion region is solid."""
    for _ in range(MAX_PLACEMENT_TRIES):
        site = anatomy.sites[rng.integers(len(anatomy.sites))]
        shrunk = Ellipse(site.centre_u, site.centre_v, site.half_u * site_fraction - margin,
                         site.half_v * site_fraction - margin, site.angle)
        u, v = shrunk.point(np.sqrt(rng.uniform()), rng.uniform(0, 2 * np.pi))  # uniform by area
        if anatomy.region_at(u, v) >= MIN_REGION_AT_CENTRE:
            return u, v
    raise RuntimeError("could not place a lesion inside the anatomy")


def _finish(picture: np.ndarray, noise: np.ndarray) -> np.ndarray:
    return np.clip(picture + noise, 0.0, 1.0).astype(np.float32)


class Phantom(NamedTuple):
    """One drawn phantom."""

    image: np.ndarray  # float32 (size, size) in [0, 1]
    mask: np.ndarray  # bool (size, size): the lesion; all False for a negative
    twin: np.ndarray | None  # a positive's healthy twin: its picture and noise without the lesion; None for a negative


def _healthy(anatomy: Anatomy) -> Phantom:
    return Phantom(_finish(anatomy.picture, anatomy.noise), np.zeros(anatomy.picture.shape, bool), None)


def _with_lesion(anatomy: Anatomy, lesion: np.ndarray, mask: np.ndarray) -> Phantom:
    # The twin is finished from the very arrays the image is, so the two differ only where the lesion is.
    return Phantom(_finish(anatomy.picture + lesion, anatomy.noise), mask, _finish(anatomy.picture, anatomy.noise))


# --- chest radiograph ------------------------------------------------------------------


def _cxr_lung(rng, side: int) -> Ellipse:
    """One lung field; side -1 is the image's left, +1 its right."""
    return Ellipse(side * _uniform(rng, CXR_LUNG_CENTRE_U), _uniform(rng, CXR_LUNG_CENTRE_V),
                   _uniform(rng, CXR_LUNG_HALF_WIDTH), _uniform(rng, CXR_LUNG_HALF_HEIGHT),
                   side * _uniform(rng, CXR_LUNG_TILT))


def _cxr_ribs(rng, frame: Frame, lung: Ellipse) -> np.ndarray:
    """Bright arcs spaced down one lung, each highest near CXR_RIB_PEAK_U from the midline."""
    count = rng.integers(*CXR_RIB_COUNT)
    top = lung.centre_v - lung.half_v
    spacing = 2 * lung.half_v / count
    heights = top + (np.arange(count) + 0.5 + rng.uniform(-0.15, 0.15, count)) * spacing
    curvature = _uniform(rng, CXR_RIB_CURVATURE)
    thickness = _uniform(rng, CXR_RIB_THICKNESS)
    arc = curvature * (np.abs(frame.u) - CXR_RIB_PEAK_U) ** 2
    offsets = (frame.v[None] - arc[None] - heights[:, None, None]) / thickness
    bands = np.exp(-(offsets**2)).sum(axis=0)
    field = Ellipse(lung.centre_u, lung.centre_v, lung.half_u * CXR_RIB_FIELD_SCALE,
                    lung.half_v * CXR_RIB_FIELD_SCALE, lung.angle)
    return _uniform(rng, CXR_RIB_BRIGHTNESS) * bands * field.inside(frame.u, frame.v, CXR_LUNG_EDGE)


def cxr_anatomy(rng: np.random.Generator, size: int) -> Anatomy:
    """A frontal chest radiograph without lesions: body, lungs, ribs, heart, mediastinum."""
    frame = _random_frame(rng, size, CXR_ROTATION_DEG, CXR_SCALE, CXR_SHIFT)
    u, v = frame.u, frame.v
    body = Ellipse(0.0, CXR_BODY_CENTRE_V, _uniform(rng, CXR_BODY_HALF_WIDTH), CXR_BODY_HALF_HEIGHT)
    body_level = _uniform(rng, CXR_BODY_LEVEL)
    background = _uniform(rng, CXR_BACKGROUND)
    lungs = (_cxr_lung(rng, -1), _cxr_lung(rng, +1))
    heart = Ellipse(_uniform(rng, CXR_HEART_CENTRE[0]), _uniform(rng, CXR_HEART_CENTRE[1]),
                    _uniform(rng, CXR_HEART_HALF_AXES[0]), _uniform(rng, CXR_HEART_HALF_AXES[1]),
                    _uniform(rng, CXR_HEART_TILT))
    mediastinum = Ellipse(0.0, CXR_MEDIASTINUM_CENTRE_V, _uniform(rng, CXR_MEDIASTINUM_HALF_AXES[0]),
                          _uniform(rng, CXR_MEDIASTINUM_HALF_AXES[1]))
    heart_level = body_level + _uniform(rng, CXR_HEART_EXTRA)

    def central_shadow(u, v):
        return np.maximum(heart.inside(u, v, CXR_LUNG_EDGE),
                          mediastinum.inside(u, v, CXR_MEDIASTINUM_EDGE))

    def lung_fields(u, v):
        aerated = np.maximum(*(lung.inside(u, v, CXR_LUNG_EDGE) for lung in lungs))
        return aerated * (1 - central_shadow(u, v))

    in_body = body.inside(u, v, CXR_BODY_EDGE)
    tissue = body_level + _uniform(rng, CXR_BODY_VERTICAL_GRADIENT) * v
    picture = background + (tissue - background) * in_body
    lung_field = lung_fields(u, v)
    picture = picture - _uniform(rng, CXR_LUNG_DEPTH) * lung_field
    shadow = central_shadow(u, v)
    picture = picture * (1 - shadow) + heart_level * shadow
    ribs = sum(_cxr_ribs(rng, frame, lung) for lung in lungs)
    picture = picture + ribs * (1 - CXR_RIB_BEHIND_HEART * shadow) * in_body
    haze = CXR_HAZE * _smooth_field(rng, size, CXR_HAZE_CELLS) + _linear_gradient(rng, frame, CXR_GRADIENT)
    picture = (picture + haze * in_body) * _uniform(rng, CXR_GAIN)
    noise = _uniform(rng, CXR_NOISE) * rng.standard_normal((size, size)).astype(np.float32)
    return Anatomy(picture.astype(np.float32), noise, lung_field.astype(np.float32),
                   lung_fields, lungs, frame)


def _cxr_opacities(rng, anatomy: Anatomy) -> tuple[np.ndarray, np.ndarray]:
    """1-3 soft, textured ground-glass opacities confined to the lung fields."""
    frame = anatomy.frame
    size = frame.u.shape[0]
    brightening = np.zeros_like(frame.u)
    mask = np.zeros(frame.u.shape, dtype=bool)
    for _ in range(rng.integers(*CXR_OPACITY_COUNT)):
        centre = _sample_centre(rng, anatomy, CXR_OPACITY_SITE)
        radius = _uniform(rng, CXR_OPACITY_RADIUS)
        blob = Ellipse(*centre, radius, radius * _uniform(rng, CXR_OPACITY_ASPECT), rng.uniform(0, np.pi))
        envelope = smoothstep(1.0, CXR_OPACITY_CORE, blob.radius(frame.u, frame.v)) * anatomy.region
        texture = np.clip(1 + CXR_OPACITY_TEXTURE * _smooth_field(rng, size, CXR_OPACITY_TEXTURE_CELLS), 0, None)
        brightening += _uniform(rng, CXR_OPACITY_BRIGHTNESS) * envelope * texture
        mask |= envelope > MASK_FRACTION
    return brightening, mask


def cxr_phantom(rng: np.random.Generator, size: int, positive: bool) -> Phantom:
    """Chest-radiograph phantom; positives carry 1-3 ground-glass opacities in the lungs.

    The mask is where an opacity's smooth envelope is above MASK_FRACTION of its peak; a
    positive's twin is the same radiograph without the opacities.
    """
    anatomy = cxr_anatomy(rng, size)
    return _with_lesion(anatomy, *_cxr_opacities(rng, anatomy)) if positive else _healthy(anatomy)


# --- brain MRI --------------------------------------------------------------------------


def _mri_ventricles(rng, frame: Frame) -> np.ndarray:
    """Two lateral ventricles splayed apart at the front like a butterfly."""
    offset = _uniform(rng, MRI_VENTRICLE_OFFSET_U)
    centre_v = _uniform(rng, MRI_VENTRICLE_CENTRE_V)
    half_u, half_v = (_uniform(rng, axis) for axis in MRI_VENTRICLE_HALF_AXES)
    splay = _uniform(rng, MRI_VENTRICLE_SPLAY)
    left = Ellipse(-offset, centre_v, half_u, half_v, splay)
    right = Ellipse(offset, centre_v, half_u, half_v, -splay)
    return np.maximum(left.inside(frame.u, frame.v, MRI_VENTRICLE_EDGE),
                      right.inside(frame.u, frame.v, MRI_VENTRICLE_EDGE))


def mri_anatomy(rng: np.random.Generator, size: int) -> Anatomy:
    """An axial T1-like brain slice without lesions: skull, grey/white matter, ventricles."""
    frame = _random_frame(rng, size, MRI_ROTATION_DEG, MRI_SCALE, MRI_SHIFT)
    u, v = frame.u, frame.v
    head = Ellipse(0.0, 0.0, _uniform(rng, MRI_HEAD_HALF_AXES[0]), _uniform(rng, MRI_HEAD_HALF_AXES[1]))
    skull_inner = _uniform(rng, MRI_SKULL_INNER)
    brain_scale = skull_inner - MRI_CSF_GAP
    brain = Ellipse(0.0, 0.0, head.half_u * brain_scale, head.half_v * brain_scale)

    def brain_region(u, v):
        return brain.inside(u, v, MRI_BRAIN_EDGE)

    head_radius = head.radius(u, v)
    in_head = smoothstep(1 + MRI_HEAD_EDGE, 1 - MRI_HEAD_EDGE, head_radius)
    in_brain = brain_region(u, v)
    background = _uniform(rng, MRI_BACKGROUND)
    picture = background + (_uniform(rng, MRI_SKULL_LEVEL) - background) * in_head
    inside_skull = smoothstep(skull_inner + MRI_HEAD_EDGE, skull_inner - MRI_HEAD_EDGE, head_radius)
    picture = picture * (1 - inside_skull) + _uniform(rng, MRI_CSF_LEVEL) * inside_skull

    brain_radius, brain_angle = brain.polar(u, v)
    folds = rng.integers(*MRI_GYRI)
    white_extent = (_uniform(rng, MRI_WHITE_EXTENT)
                    + _uniform(rng, MRI_GYRUS_DEPTH) * np.sin(folds * brain_angle + rng.uniform(0, 2 * np.pi)))
    white = smoothstep(white_extent + MRI_GREY_WHITE_EDGE, white_extent - MRI_GREY_WHITE_EDGE, brain_radius)
    grey_level, white_level = _uniform(rng, MRI_GREY_LEVEL), _uniform(rng, MRI_WHITE_LEVEL)
    tissue = grey_level + (white_level - grey_level) * white
    ventricles = _mri_ventricles(rng, frame)
    tissue = tissue * (1 - ventricles) + _uniform(rng, MRI_VENTRICLE_LEVEL) * ventricles
    outer_brain = smoothstep(MRI_FISSURE_START - MRI_GREY_WHITE_EDGE, MRI_FISSURE_START, np.abs(v) / brain.half_v)
    tissue = tissue - _uniform(rng, MRI_FISSURE_DEPTH) * np.exp(-((u / MRI_FISSURE_WIDTH) ** 2)) * outer_brain
    tissue = tissue + MRI_TISSUE_TEXTURE * _smooth_field(rng, size, MRI_TISSUE_TEXTURE_CELLS)
    picture = picture * (1 - in_brain) + tissue * in_brain
    picture = picture * (1 + MRI_BIAS * _smooth_field(rng, size, MRI_BIAS_CELLS))
    noise = _uniform(rng, MRI_NOISE) * rng.standard_normal((size, size)).astype(np.float32)
    return Anatomy(picture.astype(np.float32), noise, in_brain.astype(np.float32),
                   brain_region, (brain,), frame)


def _mri_tumour(rng, anatomy: Anatomy) -> tuple[np.ndarray, np.ndarray]:
    """Change a tumour makes to the picture, and its mask (rim and core, oedema excluded)."""
    frame = anatomy.frame
    radius = _uniform(rng, MRI_TUMOUR_RADIUS)
    centre = _sample_centre(rng, anatomy, 1.0, margin=MRI_TUMOUR_MARGIN * radius)
    outline = Ellipse(*centre, radius, radius * _uniform(rng, MRI_TUMOUR_ASPECT), rng.uniform(0, np.pi))
    distance, angle = outline.polar(frame.u, frame.v)
    lobulation = 1 + MRI_TUMOUR_LOBULATION * sum(
        rng.uniform(0, 1) * np.sin(lobes * angle + rng.uniform(0, 2 * np.pi)) for lobes in MRI_TUMOUR_LOBES)
    distance = distance / lobulation
    edge = MRI_TUMOUR_EDGE_PIXELS * frame.pixel / radius
    weight = smoothstep(1 + edge, 1 - edge, distance) * anatomy.region
    core_fraction = _uniform(rng, MRI_TUMOUR_CORE_FRACTION)
    rim_level, core_level = _uniform(rng, MRI_TUMOUR_RIM_LEVEL), _uniform(rng, MRI_TUMOUR_CORE_LEVEL)
    rim = smoothstep(core_fraction - MRI_TUMOUR_CORE_EDGE, core_fraction + MRI_TUMOUR_CORE_EDGE, distance)
    tumour_level = core_level + (rim_level - core_level) * rim
    halo = smoothstep(_uniform(rng, MRI_OEDEMA_EXTENT), 1.0, distance) * anatomy.region * (1 - weight)
    change = weight * (tumour_level - anatomy.picture) + _uniform(rng, MRI_OEDEMA_LEVEL) * halo
    return change, weight > MASK_FRACTION


def mri_phantom(rng: np.random.Generator, size: int, positive: bool) -> Phantom:
    """Axial brain-MRI phantom; positives carry a tumour (bright rim, dark core, oedema halo).

    The mask is the rim and core (where the tumour's blending weight is above MASK_FRACTION);
    the faint oedema halo is left out, as tumour masks in public sets (e.g. figshare) mark the
    tumour itself. A positive's twin is the same slice without the tumour and its oedema.
    """
    anatomy = mri_anatomy(rng, size)
    return _with_lesion(anatomy, *_mri_tumour(rng, anatomy)) if positive else _healthy(anatomy)


def template_mri_phantom(rng: np.random.Generator, size: int, positive: bool) -> Phantom:
    """An axial slice of the MNI152 T1 template with a lesion of its own model
    (`medxgan.data.template_mri`): real anatomy, for judging on data the phantoms above do not contain."""
    from medxgan.data.template_mri import template_mri  # reads nilearn's copy of the template once

    return Phantom(*template_mri(rng, size, positive))


# --- datasets ---------------------------------------------------------------------------


class PhantomKind(NamedTuple):
    generate: Callable[[np.random.Generator, int, bool], Phantom]
    negative: str
    positive: str


PHANTOMS = {
    "synthetic-cxr": PhantomKind(cxr_phantom, "normal", "opacity"),
    "synthetic-mri": PhantomKind(mri_phantom, "no_tumor", "tumor"),
    "template-mri": PhantomKind(template_mri_phantom, "no_tumor", "tumor"),
}


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Generator for one image, independent of how many images the dataset holds."""
    return np.random.default_rng(np.random.SeedSequence([seed, IMAGE_STREAM, SPLITS.index(split), index]))


def positive_flags(seed: int, split: str, count: int, positive_fraction: float) -> np.ndarray:
    """Which of a split's images are positive: exactly round(fraction * count), shuffled."""
    order = np.random.default_rng(np.random.SeedSequence([seed, ORDER_STREAM, SPLITS.index(split)]))
    return order.permutation(count) < round(positive_fraction * count)


def _save_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(np.round(array * PIXEL_LEVELS).astype(np.uint8)).save(path)


def _write_split(phantom: PhantomKind, folder: Path, split: str, count: int, image_size: int,
                 positive_fraction: float, seed: int) -> list[dict]:
    rows = []
    for index, positive in enumerate(positive_flags(seed, split, count, positive_fraction)):
        name = f"{split}_{index:05d}"
        drawn = phantom.generate(image_rng(seed, split, index), image_size, bool(positive))
        _save_png(drawn.image, folder / "images" / f"{name}.png")
        mask_path = twin_path = ""
        if positive:
            mask_path, twin_path = f"masks/{name}.png", f"twins/{name}.png"
            _save_png(drawn.mask.astype(np.float32), folder / mask_path)
            _save_png(drawn.twin, folder / twin_path)
        rows.append({"path": f"images/{name}.png", "label": phantom.positive if positive else phantom.negative,
                     "split": split, "mask_path": mask_path, "patient_id": name, TWIN_COLUMN: twin_path})
    return rows


def _replace_dir(built: Path, target: Path) -> None:
    """Move `built` onto `target`, removing a previous `target` only once the move succeeded."""
    if not target.exists():
        built.rename(target)
        return
    previous = built.with_name(built.name + ".previous")
    target.rename(previous)
    built.rename(target)
    shutil.rmtree(previous)


def write_phantom_dataset(kind: str, out_dir: Path, image_size: int, counts: dict[str, int],
                          positive_fraction: float, seed: int) -> Path:
    """Write a phantom dataset (PNG images; for positives PNG masks and healthy twins; manifest.csv) to out_dir.

    Image i of a split is generated from (seed, split, i) alone. The dataset is built in a
    temporary sibling folder and swapped in whole, so out_dir is never half written.
    Returns the manifest's path.
    """
    if kind not in PHANTOMS:
        raise ValueError(f"unknown phantom kind {kind!r}; known kinds: {', '.join(PHANTOMS)}")
    unknown_splits = set(counts) - set(SPLITS)
    if unknown_splits:
        raise ValueError(f"unknown split(s) {sorted(unknown_splits)} in counts; splits are {', '.join(SPLITS)}")
    if not 0.0 <= positive_fraction <= 1.0:
        raise ValueError(f"positive_fraction must lie in [0, 1], got {positive_fraction}")
    phantom = PHANTOMS[kind]
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.building-"))
    try:
        (building / "images").mkdir()
        (building / "masks").mkdir()
        (building / "twins").mkdir()
        rows = []
        for split in SPLITS:
            if split in counts:
                rows += _write_split(phantom, building, split, counts[split], image_size, positive_fraction, seed)
        write_manifest(pd.DataFrame(rows, columns=[*MANIFEST_COLUMNS, TWIN_COLUMN]), building / "manifest.csv")
        _replace_dir(building, out_dir)
    finally:
        if building.exists():
            shutil.rmtree(building)
    return out_dir / "manifest.csv"
