"""The manifest check: the structural faults that would make a run wrong without making it fail."""

import logging
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medxgan.data.manifest import ManifestError
from medxgan.data.manifest_check import check_manifest
from medxgan.data.phantoms import write_phantom_dataset

NEG, POS = "no_tumor", "tumor"


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    return write_phantom_dataset("synthetic-mri", tmp_path_factory.mktemp("clean") / "mri", 64,
                                 {"train": 12, "val": 4, "test": 6}, 0.5, seed=0)


@pytest.fixture
def edit(clean, tmp_path):
    """A copy of the clean dataset whose manifest `change(table, folder)` edits (or returns anew)."""
    def edited(change):
        folder = tmp_path / "data"
        shutil.copytree(clean.parent, folder)
        table = pd.read_csv(folder / "manifest.csv", dtype=str, keep_default_na=False)
        table = change(table, folder)
        table.to_csv(folder / "manifest.csv", index=False)
        return folder / "manifest.csv"
    return edited


def check(manifest):
    return check_manifest(manifest, NEG, POS, 64, seed=0)


def first(table, split, label):
    return table.index[(table.split == split) & (table.label == label)][0]


def test_a_clean_manifest_passes_with_its_counts(clean):
    report = check(clean)
    assert report["warnings"] == [] and report["rows"] == 22
    assert report["counts"]["train/tumor"] + report["counts"]["train/no_tumor"] == 12
    positives = sum(n for key, n in report["counts"].items() if key.split("/")[1] == POS)
    assert report["healthy_twins"] == report["masks"] == positives


def test_the_same_file_in_train_and_test_is_an_error_naming_the_lines(edit):
    def leak(table, folder):
        table.loc[first(table, "test", POS), "path"] = table.loc[first(table, "train", POS), "path"]
        return table
    with pytest.raises(ManifestError, match=r"image \S+ is listed on lines \d+, \d+; each image needs exactly one row"):
        check(edit(leak))


def test_the_same_content_under_two_names_is_an_error_naming_both_files(edit):
    def copy(table, folder):
        shutil.copyfile(folder / table.loc[first(table, "train", NEG), "path"], folder / "images" / "copy.png")
        table.loc[first(table, "test", NEG), "path"] = "images/copy.png"
        return table
    manifest = edit(copy)
    original = pd.read_csv(manifest).query("split == 'train' and label == @NEG").path.iloc[0]
    with pytest.raises(ManifestError, match=rf"images ({re.escape(original)}, images/copy\.png|images/copy\.png, "
                                            rf"{re.escape(original)}) have the same content and are in splits test, "
                                            r"train \(lines \d+, \d+\)"):
        check(manifest)


def test_conflicting_labels_missing_classes_and_escaping_paths_are_errors(edit, tmp_path):
    def two_labels(table, folder):
        twin = table.loc[first(table, "train", NEG)].copy()
        twin["label"], twin["mask_path"] = POS, ""
        table.loc[len(table)] = twin
        return table
    with pytest.raises(ManifestError, match=r"is listed on lines \d+, \d+"):
        check(edit(two_labels))
    shutil.rmtree(tmp_path / "data")

    def no_test_positives(table, folder):
        return table[~((table.split == "test") & (table.label == POS))]
    with pytest.raises(ManifestError, match="split 'test' has no 'tumor' image"):
        check(edit(no_test_positives))
    shutil.rmtree(tmp_path / "data")

    def outside(table, folder):
        shutil.copyfile(folder / table.loc[0, "path"], tmp_path / "outside.png")
        table.loc[0, "path"] = "../outside.png"
        return table
    with pytest.raises(ManifestError, match="leave the manifest's folder"):
        check(edit(outside))


def test_masks_on_negatives_and_empty_masks_are_warnings(edit, caplog):
    def faults(table, folder):
        positive = first(table, "test", POS)
        Image.fromarray(np.zeros((64, 64), np.uint8)).save(folder / table.loc[positive, "mask_path"])
        table.loc[first(table, "test", NEG), "mask_path"] = table.loc[first(table, "train", POS), "mask_path"]
        return table
    with caplog.at_level(logging.WARNING, logger="medxgan.data.manifest_check"):
        report = check(edit(faults))
    assert any("negative images with a lesion mask" in w for w in report["warnings"])
    assert any("mask is empty" in w for w in report["warnings"])
    assert "mask is empty" in caplog.text


def test_a_mask_that_is_not_binary_names_the_manifest_line_and_the_mask_once(edit):
    def grey_levels(table, folder):
        mask = folder / table.loc[first(table, "test", POS), "mask_path"]
        Image.fromarray(np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1))).save(mask)
        return table
    manifest = edit(grey_levels)
    line = first(pd.read_csv(manifest), "test", POS) + 2  # the header is line 1
    with pytest.raises(ManifestError, match=rf"manifest\.csv, line {line}: mask \S+\.png is not binary") as error:
        check(manifest)
    mask = pd.read_csv(manifest).mask_path[line - 2]
    assert str(error.value).count(mask) == 1


def test_a_twin_of_another_size_is_an_error_and_a_twin_on_a_negative_a_warning(edit, tmp_path):
    def small_twin(table, folder):
        twin = table.loc[first(table, "test", POS), "healthy_twin_path"]
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(folder / twin)
        return table
    with pytest.raises(ManifestError, match=r"line \d+: column 'healthy_twin_path': healthy twin .* is 32x32 pixels, "
                                             r"its image .* is 64x64"):
        check(edit(small_twin))
    shutil.rmtree(tmp_path / "data")

    def twin_on_negative(table, folder):
        table.loc[first(table, "test", NEG), "healthy_twin_path"] = table.loc[first(table, "test", POS), "healthy_twin_path"]
        return table
    report = check(edit(twin_on_negative))
    assert any("negative images with a healthy twin" in w for w in report["warnings"])


def test_twins_and_their_content_count_in_the_content_digest(edit, clean, tmp_path):
    with_twins = check(clean)["content_sha256"]
    digest_without = check(edit(lambda table, folder: table.drop(columns="healthy_twin_path")))["content_sha256"]
    assert digest_without != with_twins
    shutil.rmtree(tmp_path / "data")

    def other_twin(table, folder):
        twin = folder / table.loc[first(table, "test", POS), "healthy_twin_path"]
        Image.fromarray(255 - np.asarray(Image.open(twin))).save(twin)
        return table
    assert check(edit(other_twin))["content_sha256"] not in (with_twins, digest_without)
