"""The template-mri phantom: slices of the MNI152 T1 template (real anatomy) with lesions, masks and twins.

The properties every phantom kind shares (shapes, ranges, determinism, the mask covering the change)
are tested for it in tests/test_phantoms.py."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage

from medxgan.config import ConfigError
from medxgan.data import template_mri
from medxgan.data.phantoms import PHANTOMS, write_phantom_dataset

SEEDS = range(20)
EDGE_PIXELS = 2  # the lesion's soft edge reaches this far beyond its mask at 64 px


def draw(seed, positive=True, size=64):
    return PHANTOMS["template-mri"].generate(np.random.default_rng(seed), size, positive)


def test_the_anatomy_is_the_installed_template():
    """Real anatomy: a slice of the image is the template's own slice, up to the pose and the contrast."""
    volume = template_mri.template_volume()
    assert volume.shape == (197, 233, 189) and volume.max() == template_mri.TEMPLATE_MAX
    image = draw(0, positive=False).image
    brain = image > template_mri.BRAIN_LEVEL / template_mri.TEMPLATE_MAX
    assert 0.2 < brain.mean() < 0.8  # a brain fills much of the field, not all of it
    # its slices are not the procedural phantom's: the same seed draws another picture
    assert np.abs(image - PHANTOMS["synthetic-mri"].generate(np.random.default_rng(0), 64, False).image).mean() > 0.05


def test_the_twin_is_the_negative_of_the_same_draw_and_differs_only_at_the_lesion():
    for seed in SEEDS:
        image, mask, twin = draw(seed)
        np.testing.assert_array_equal(twin, draw(seed, positive=False).image)
        changed = image != twin
        near_mask = ndimage.binary_dilation(mask, iterations=EDGE_PIXELS)
        assert mask.any() and not (changed & ~near_mask).any()
        assert (np.abs(image - twin)[mask] > 0.02).mean() >= 0.9
        assert (image - twin)[changed].min() > 0  # a bright lesion: it only adds intensity


def test_lesions_lie_in_the_brain():
    for seed in SEEDS:
        image, mask, twin = draw(seed)
        brain = twin > template_mri.BRAIN_LEVEL / template_mri.TEMPLATE_MAX
        assert not (mask & ~ndimage.binary_dilation(brain)).any()


def test_a_dataset_of_template_slices_runs_through_the_phantom_writer(tmp_path):
    manifest = write_phantom_dataset("template-mri", tmp_path / "template", 64, {"train": 6, "test": 4}, 0.5, 1)
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    assert set(table.label) == {"tumor", "no_tumor"} and (table.label == "tumor").sum() == 5
    for row in table[table.label == "tumor"].itertuples():
        image, twin = (np.asarray(Image.open(manifest.parent / path)) for path in (row.path, row.healthy_twin_path))
        mask = np.asarray(Image.open(manifest.parent / row.mask_path)) > 0
        assert (image.astype(int) - twin)[mask].mean() > 10  # the lesion shows in the written 8-bit files


def test_a_missing_template_names_the_extra_to_install(monkeypatch):
    template_mri.template_volume.cache_clear()
    monkeypatch.setattr(template_mri, "TEMPLATE_PACKAGE", "no_such_package_here")
    try:
        with pytest.raises(ConfigError, match=r"template-mri .* pip install -e '\.\[template\]'"):
            template_mri.template_volume()
    finally:
        template_mri.template_volume.cache_clear()
