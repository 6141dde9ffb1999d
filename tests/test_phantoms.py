import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medxgan.data.manifest import MANIFEST_COLUMNS, TWIN_COLUMN
from medxgan.data.phantoms import (PHANTOMS, _cxr_opacities, _mri_tumour, cxr_anatomy, image_rng, mri_anatomy,
                                   write_phantom_dataset)

KINDS = sorted(PHANTOMS)
ANATOMY = {"synthetic-cxr": cxr_anatomy, "synthetic-mri": mri_anatomy}
LESION = {"synthetic-cxr": _cxr_opacities, "synthetic-mri": _mri_tumour}
PROCEDURAL = sorted(ANATOMY)  # template-mri's anatomy is the MNI152 template's (tests/test_template_mri.py)
SEEDS = range(20)
STRONG_CHANGE = 0.5  # fraction of an image's largest lesion change
CHANGE_FLOOR = 0.02  # a mask pixel counts as changed above this


def generate(kind, seed, size=64, positive=True):
    return PHANTOMS[kind].generate(np.random.default_rng(seed), size, positive)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", [32, 64, 128])
def test_shapes_ranges_and_mask_presence(kind, size):
    for seed in range(5):
        for positive in (False, True):
            image, mask, twin = generate(kind, seed, size, positive)
            assert image.shape == mask.shape == (size, size)
            assert image.dtype == np.float32 and mask.dtype == bool
            assert 0.0 <= image.min() and image.max() <= 1.0
            assert mask.any() == positive
            assert (twin is not None) == positive


@pytest.mark.parametrize("kind", KINDS)
def test_positive_masks_never_empty_at_small_size(kind):
    assert all(generate(kind, seed, 32).mask.any() for seed in range(200))


@pytest.mark.parametrize("kind", KINDS)
def test_deterministic_by_seed(kind):
    image, mask, twin = generate(kind, 7)
    again, mask_again, twin_again = generate(kind, 7)
    other = generate(kind, 8).image
    np.testing.assert_array_equal(image, again)
    np.testing.assert_array_equal(mask, mask_again)
    np.testing.assert_array_equal(twin, twin_again)
    assert np.abs(image - other).mean() > 0.01


@pytest.mark.parametrize("kind", KINDS)
def test_mask_covers_what_the_lesion_changed(kind):
    """Same seed with and without lesion shares the anatomy; the difference is the lesion."""
    strong_inside = strong_total = 0
    for seed in SEEDS:
        with_lesion, mask, _ = generate(kind, seed, positive=True)
        without = generate(kind, seed, positive=False).image
        change = np.abs(with_lesion - without)
        strong = change > STRONG_CHANGE * change.max()
        strong_inside += (strong & mask).sum()
        strong_total += strong.sum()
        assert (change[mask] > CHANGE_FLOOR).mean() >= 0.9
    assert strong_inside / strong_total >= 0.9


@pytest.mark.parametrize("kind", PROCEDURAL)
def test_lesion_lies_inside_its_organ(kind):
    """Opacities sit in the lung fields, tumours in the brain."""
    for seed in SEEDS:
        mask = generate(kind, seed).mask
        organ = ANATOMY[kind](np.random.default_rng(seed), 64).region > 0.5
        assert not (mask & ~organ).any()


@pytest.mark.parametrize("kind", KINDS)
def test_lesions_are_not_tiny(kind):
    side = 64
    diameters = [np.sqrt(generate(kind, seed, side).mask.sum() * 4 / np.pi) / side for seed in SEEDS]
    assert min(diameters) >= 0.07 and np.median(diameters) >= 0.12


def lesion_support(kind, rng, size):
    """Where the lesion `rng` draws next changes the picture at all (the oedema halo included)."""
    anatomy = ANATOMY[kind](rng, size)
    change, _ = LESION[kind](rng, anatomy)
    return change != 0


@pytest.mark.parametrize("kind", PROCEDURAL)
def test_the_twin_is_the_positive_without_its_lesion(kind):
    """Outside the lesion's support the twin is the image itself; inside, the lesion shows; and it is
    the negative phantom of the same seed: the same anatomy and noise."""
    for seed in SEEDS:
        image, mask, twin = generate(kind, seed)
        support = lesion_support(kind, np.random.default_rng(seed), 64)
        assert mask.any() and not (mask & ~support).any()
        np.testing.assert_array_equal(twin[~support], image[~support])
        assert (np.abs(image - twin)[mask] > CHANGE_FLOOR).mean() >= 0.9
        np.testing.assert_array_equal(twin, generate(kind, seed, positive=False).image)


def test_unknown_kind_is_named(tmp_path):
    with pytest.raises(ValueError, match="synthetic-ct"):
        write_phantom_dataset("synthetic-ct", tmp_path / "out", 32, {"train": 2}, 0.5, 0)


COUNTS = {"train": 10, "val": 4, "test": 5}
DATASET_SEED = 3


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("phantoms") / "mri"
    manifest = write_phantom_dataset("synthetic-mri", out_dir, 32, COUNTS, 0.5, seed=DATASET_SEED)
    return manifest, pd.read_csv(manifest, dtype=str, keep_default_na=False)


def test_dataset_manifest_layout(dataset):
    manifest, table = dataset
    assert tuple(table.columns) == (*MANIFEST_COLUMNS, TWIN_COLUMN)
    for split, count in COUNTS.items():
        rows = table[table["split"] == split]
        assert len(rows) == count
        assert (rows["label"] == "tumor").sum() == round(0.5 * count)
        assert set(rows["label"]) == {"tumor", "no_tumor"}
    assert table["patient_id"].is_unique


def test_dataset_files_and_masks(dataset):
    manifest, table = dataset
    folder = manifest.parent
    for row in table.itertuples():
        image = np.asarray(Image.open(folder / row.path))
        assert not row.path.startswith("/") and image.shape == (32, 32) and image.dtype == np.uint8
        if row.label == "tumor":
            mask = np.asarray(Image.open(folder / row.mask_path))
            assert set(np.unique(mask)) == {0, 255}
        else:
            assert row.mask_path == "" and row.healthy_twin_path == ""
    positives = (table["label"] == "tumor").sum()
    assert len(list((folder / "masks").iterdir())) == len(list((folder / "twins").iterdir())) == positives


def test_dataset_twins_match_their_images_up_to_png_rounding(dataset):
    """A twin PNG holds the image's very pixels outside the lesion's support (both are rounded from
    the same values there) and differs where the mask is."""
    manifest, table = dataset
    folder = manifest.parent
    for row in table[table["label"] == "tumor"].itertuples():
        index = int(row.patient_id.removeprefix(f"{row.split}_"))  # patient_id is the image's name: split_index
        support = lesion_support("synthetic-mri", image_rng(DATASET_SEED, row.split, index), 32)
        image, twin, mask = (np.asarray(Image.open(folder / path)) for path in (row.path, row.healthy_twin_path,
                                                                                 row.mask_path))
        assert twin.shape == image.shape and twin.dtype == image.dtype
        np.testing.assert_array_equal(twin[~support], image[~support])
        assert (twin[mask > 0] != image[mask > 0]).mean() >= 0.9


def test_images_do_not_depend_on_other_counts(tmp_path):
    first = write_phantom_dataset("synthetic-cxr", tmp_path / "a", 32, {"train": 6, "test": 3}, 0.5, seed=1)
    second = write_phantom_dataset("synthetic-cxr", tmp_path / "b", 32, {"train": 4, "val": 2, "test": 3}, 0.5, seed=1)
    a = pd.read_csv(first, dtype=str, keep_default_na=False).set_index("path")
    b = pd.read_csv(second, dtype=str, keep_default_na=False).set_index("path")
    compared = 0
    for path in a.index.intersection(b.index):
        same_label = a.loc[path, "label"] == b.loc[path, "label"]
        if a.loc[path, "split"] == "test":
            assert same_label  # the test split's own count did not change
        # a changed count may reshuffle which indices are positive, but the anatomy is kept:
        # an index with the same label gives the same image
        if same_label:
            assert (tmp_path / "a" / path).read_bytes() == (tmp_path / "b" / path).read_bytes()
            compared += 1
    assert compared >= 5


def test_rewrite_replaces_the_folder_atomically(tmp_path):
    out_dir = tmp_path / "data"
    write_phantom_dataset("synthetic-cxr", out_dir, 32, {"train": 2}, 0.5, seed=0)
    (out_dir / "stale.txt").write_text("old")
    manifest = write_phantom_dataset("synthetic-cxr", out_dir, 32, {"test": 3}, 0.5, seed=0)
    assert not (out_dir / "stale.txt").exists()
    assert list(pd.read_csv(manifest)["split"]) == ["test"] * 3
    assert [p.name for p in tmp_path.iterdir()] == ["data"]  # no temporary folders left
