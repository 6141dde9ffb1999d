import re

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from medxgan.data.manifest import (MANIFEST_COLUMNS, TWIN_COLUMN, ImageSet, ManifestError, check_twin_size, load_image,
                                   load_split, read_manifest, write_manifest)

NEG, POS = "normal", "opacity"
SIZE = 32
MASK_SIDE = 128
SQUARE = (slice(32, 64), slice(64, 96))  # rows, columns of the mask's square at MASK_SIDE
SCALE = MASK_SIDE // SIZE


def save_image(path, size, mode):
    """A random image of (width, height) `size` in PIL `mode`."""
    channels = 3 if mode == "RGB" else 1
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    Image.fromarray(pixels.squeeze()).save(path)


def save_square_mask(path):
    """A 3-channel mask of another size than the images, with a square in a known place."""
    mask = np.zeros((MASK_SIDE, MASK_SIDE, 3), dtype=np.uint8)
    mask[SQUARE] = 255
    Image.fromarray(mask).save(path)


def write_rows(folder, rows):
    manifest = folder / "manifest.csv"
    pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS)).to_csv(manifest, index=False)
    return manifest


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "img").mkdir()
    save_image(tmp_path / "img" / "grey.png", (50, 37), "L")
    save_image(tmp_path / "img" / "colour.jpg", (61, 45), "RGB")
    save_image(tmp_path / "img" / "colour.png", (20, 20), "RGB")
    save_image(tmp_path / "img" / "grey_test.png", (40, 40), "L")
    save_square_mask(tmp_path / "img" / "mask.png")
    return tmp_path


ROWS = [
    ("img/grey.png", NEG, "train", "", "p1"),
    ("img/colour.jpg", POS, "train", "img/mask.png", "p2"),
    ("img/colour.png", POS, "train", "", "p3"),
    ("img/grey_test.png", NEG, "test", "", "p4"),
]


def test_read_manifest_adds_columns(folder):
    table = read_manifest(write_rows(folder, ROWS), NEG, POS)
    assert list(table.columns) == [*MANIFEST_COLUMNS, "line", "target", "image_file", "mask_file", "twin_file"]
    assert list(table["target"]) == [0, 1, 1, 0] and table["target"].dtype == np.int64
    assert list(table["line"]) == [2, 3, 4, 5]
    assert table.loc[1, "mask_file"] == (folder / "img" / "mask.png").resolve()
    assert table.loc[0, "mask_file"] is None and table.loc[0, "mask_path"] == ""
    assert table["twin_file"].isna().all()  # a manifest without the twin column has no twins
    assert all(path.is_absolute() for path in table["image_file"])


@pytest.mark.parametrize("channels", [1, 3])
def test_load_split_shapes_and_ranges(folder, channels):
    images = load_split(write_rows(folder, ROWS), "train", NEG, POS, SIZE, channels)
    assert len(images) == 3
    assert images.images.shape == (3, channels, SIZE, SIZE) and images.images.dtype == torch.float32
    assert images.images.min() >= -1 and images.images.max() <= 1
    assert images.labels.tolist() == [0, 1, 1] and images.labels.dtype == torch.int64
    assert images.has_mask.tolist() == [False, True, False]
    assert images.masks.shape == (3, SIZE, SIZE) and images.masks.dtype == torch.bool
    assert not images.masks[0].any() and not images.masks[2].any()
    assert images.ids == ["img/grey.png", "img/colour.jpg", "img/colour.png"]
    assert images.rows.tolist() == [0, 1, 2]


def test_mask_is_resized_in_place(folder):
    images = load_split(write_rows(folder, ROWS), "train", NEG, POS, SIZE, 1)
    expected = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    rows, columns = SQUARE
    expected[rows.start // SCALE:rows.stop // SCALE, columns.start // SCALE:columns.stop // SCALE] = True
    assert torch.equal(images.masks[1], expected)


def test_label_filter_and_subset(folder):
    manifest = write_rows(folder, ROWS)
    positives = load_split(manifest, "train", NEG, POS, SIZE, 1, label="positive")
    assert positives.labels.tolist() == [1, 1] and positives.rows.tolist() == [1, 2]
    test = load_split(manifest, "test", NEG, POS, SIZE, 1, label="negative")
    assert test.rows.tolist() == [3]
    everything = load_split(manifest, "train", NEG, POS, SIZE, 1)
    picked = everything.subset(everything.labels == 1)
    assert picked.ids == positives.ids and torch.equal(picked.images, positives.images)
    for field in ("labels", "masks", "has_mask", "rows", "has_twin"):
        assert torch.equal(getattr(picked, field), getattr(positives, field)), field
    assert everything.subset(torch.tensor([2])).ids == ["img/colour.png"]
    assert everything.twins is None and picked.twins is None  # no twins: no second image-sized tensor


def test_write_manifest_keeps_only_manifest_columns(folder):
    table = read_manifest(write_rows(folder, ROWS), NEG, POS)
    out = folder / "copy.csv"
    write_manifest(table, out)
    copy = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert tuple(copy.columns) == MANIFEST_COLUMNS
    assert copy.values.tolist() == [list(row) for row in ROWS]


def with_row(row_index, **changes):
    """ROWS with one row's fields replaced."""
    rows = [list(row) for row in ROWS]
    for column, value in changes.items():
        rows[row_index][MANIFEST_COLUMNS.index(column)] = value
    return rows


def test_missing_image_names_file_and_line(folder):
    manifest = write_rows(folder, with_row(2, path="img/absent.png"))
    with pytest.raises(ManifestError,
                       match=r"manifest\.csv, line 4: column 'path': image file .*absent\.png not found"):
        read_manifest(manifest, NEG, POS)


def test_unreadable_image_names_file_and_line(folder):
    (folder / "img" / "garbage.png").write_bytes(b"not an image at all" * 10)
    manifest = write_rows(folder, with_row(1, path="img/garbage.png"))
    with pytest.raises(ManifestError, match=r"line 3.*garbage\.png"):
        load_split(manifest, "train", NEG, POS, SIZE, 1)


def test_unknown_label_names_label_and_choices(folder):
    manifest = write_rows(folder, with_row(0, label="covid"))
    with pytest.raises(ManifestError, match=r"line 2.*'covid'.*'normal' or 'opacity'"):
        read_manifest(manifest, NEG, POS)


def test_missing_mask_names_file_and_line(folder):
    manifest = write_rows(folder, with_row(1, mask_path="img/no_mask.png"))
    with pytest.raises(ManifestError, match=r"line 3: column 'mask_path': mask file .*no_mask\.png not found"):
        read_manifest(manifest, NEG, POS)


def test_non_binary_mask_is_rejected(folder):
    gradient = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1))
    Image.fromarray(gradient).save(folder / "img" / "gradient.png")
    manifest = write_rows(folder, with_row(1, mask_path="img/gradient.png"))
    with pytest.raises(ManifestError, match=r"line 3.*gradient\.png.*not binary"):
        load_split(manifest, "train", NEG, POS, SIZE, 1)


def test_missing_column_is_named(folder):
    manifest = folder / "manifest.csv"
    pd.DataFrame(ROWS, columns=list(MANIFEST_COLUMNS)).drop(columns=["split", "patient_id"]).to_csv(manifest,
                                                                                                   index=False)
    with pytest.raises(ManifestError, match=r"manifest\.csv: missing column\(s\) split, patient_id; a manifest needs "
                                            + ", ".join(MANIFEST_COLUMNS) + "$"):
        read_manifest(manifest, NEG, POS)


@pytest.mark.parametrize("delimiter", [";", "\t"])
def test_a_manifest_separated_by_another_character_names_it(folder, delimiter):
    manifest = folder / "manifest.csv"
    pd.DataFrame(ROWS, columns=list(MANIFEST_COLUMNS)).to_csv(manifest, index=False, sep=delimiter)
    shown = re.escape(repr(delimiter))
    with pytest.raises(ManifestError, match=rf"manifest\.csv: line 1 separates its columns with {shown}; a manifest "
                                            r"separates them with commas \(path,label,split,mask_path,patient_id\): "
                                            r"save it as comma-separated CSV$"):
        read_manifest(manifest, NEG, POS)


@pytest.mark.parametrize("seed", [None, 0])
def test_a_manifest_with_only_its_header_says_it_has_no_rows(folder, seed):
    with pytest.raises(ManifestError, match=r"manifest\.csv: the manifest has no rows, only its header; "
                                            r"list one image per line$"):
        read_manifest(write_rows(folder, []), NEG, POS, seed=seed)


def test_an_image_listed_twice_is_refused_with_its_lines(folder):
    rows = [*ROWS, ("img/colour.png", POS, "test", "", "p5"), ("./img/grey.png", NEG, "val", "", "p1")]
    with pytest.raises(ManifestError, match=r"manifest\.csv: image img/grey\.png is listed on lines 2, 7; "
                                            r"image img/colour\.png is listed on lines 4, 6; "
                                            r"each image needs exactly one row$"):
        read_manifest(write_rows(folder, rows), NEG, POS)


def test_an_unparseable_manifest_is_named(folder):
    (folder / "manifest.csv").write_text('path,label,split,mask_path,patient_id\n"unclosed,normal,train,,p1\n')
    with pytest.raises(ManifestError, match=r"manifest\.csv: cannot parse the CSV"):
        read_manifest(folder / "manifest.csv", NEG, POS)


def test_equal_labels_are_refused(folder):
    with pytest.raises(ManifestError, match=rf"manifest\.csv: the negative and positive labels must differ, "
                                            rf"both are {NEG!r}$"):
        read_manifest(write_rows(folder, ROWS), NEG, NEG)


def test_patient_ids_and_paths_are_read_as_text(folder):
    ids = ["007", "7", "1e3", "010"]  # all read as numbers, "007" and "7" would be one patient
    rows = [row[:4] + (pid,) for row, pid in zip(ROWS, ids)]
    table = read_manifest(write_rows(folder, rows), NEG, POS)
    assert table["patient_id"].tolist() == ids


def test_write_manifest_names_missing_columns(folder):
    frame = pd.DataFrame(ROWS, columns=list(MANIFEST_COLUMNS)).drop(columns=["split", "patient_id"])
    with pytest.raises(ValueError, match=r"^cannot write manifest .*out\.csv: missing column\(s\) split, patient_id$"):
        write_manifest(frame, folder / "out.csv")
    assert not (folder / "out.csv").exists()


def test_bad_split_is_named(folder):
    manifest = write_rows(folder, with_row(3, split="validation"))
    with pytest.raises(ManifestError, match=r"line 5: column 'split' has 'validation'; expected one of train, val, test$"):
        read_manifest(manifest, NEG, POS)


def test_empty_path_is_named(folder):
    manifest = write_rows(folder, with_row(0, path=""))
    with pytest.raises(ManifestError, match=r"line 2.*'path' is empty"):
        read_manifest(manifest, NEG, POS)


def test_blank_lines_keep_line_numbers(folder):
    manifest = write_rows(folder, with_row(2, label="covid"))
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join(lines[:2] + [""] + lines[2:]) + "\n")
    with pytest.raises(ManifestError, match=r"line 5.*'covid'"):
        read_manifest(manifest, NEG, POS)


@pytest.mark.parametrize("arguments, message", [
    ({"split": "validation"}, "unknown split 'validation'; splits are train, val, test"),
    ({"label": "sick"}, "label must be None or one of positive, negative, got 'sick'"),
    ({"channels": 2}, "channels must be one of [1, 3], got 2"),
])
def test_load_split_names_an_argument_it_cannot_take(folder, arguments, message):
    call = {"split": "train", "channels": 1, **arguments}
    with pytest.raises(ValueError) as error:
        load_split(write_rows(folder, ROWS), call.pop("split"), NEG, POS, SIZE, call.pop("channels"), **call)
    assert str(error.value) == message


def test_an_empty_selection_names_the_split_and_label(folder):
    manifest = write_rows(folder, ROWS)  # its one test row is negative
    with pytest.raises(ManifestError, match=r"manifest\.csv: no rows in split 'test' with positive label$"):
        load_split(manifest, "test", NEG, POS, SIZE, 1, label="positive")
    with pytest.raises(ManifestError, match=r"manifest\.csv: no rows in split 'val'$"):
        load_split(write_rows(folder, ROWS[:1] + ROWS[3:]), "val", NEG, POS, SIZE, 1, seed=None)


def test_positions_load_only_that_slice_of_the_split(folder):
    whole = load_split(write_rows(folder, ROWS), "train", NEG, POS, SIZE, 1)
    part = load_split(folder / "manifest.csv", "train", NEG, POS, SIZE, 1, positions=slice(1, 3))
    assert part.ids == whole.ids[1:3] and torch.equal(part.rows, whole.rows[1:3])
    assert torch.equal(part.images, whole.images[1:3]) and torch.equal(part.labels, whole.labels[1:3])


def test_an_unreadable_mask_names_the_line_and_the_mask(folder):
    (folder / "img" / "broken.png").write_bytes(b"not a png")
    rows = [ROWS[0], ("img/colour.jpg", POS, "train", "img/broken.png", "p2")]
    with pytest.raises(ManifestError, match=r"manifest\.csv, line 3: cannot read mask .*broken\.png"):
        load_split(write_rows(folder, rows), "train", NEG, POS, SIZE, 1)


def test_missing_manifest_and_empty_split(folder):
    with pytest.raises(ManifestError, match=r"nowhere\.csv"):
        read_manifest(folder / "nowhere.csv", NEG, POS)
    manifest = write_rows(folder, ROWS)
    with pytest.raises(ManifestError, match=r"manifest\.csv.*'val'"):
        load_split(manifest, "val", NEG, POS, SIZE, 1)


# --- a validation split drawn from train ---------------------------------------------------

# At val_fraction 0.1 one patient of each label moves to val; drawn from all 13 patients
# together (not stratified), one patient of one label would.
PATIENTS = {NEG: 10, POS: 3}
ROWS_PER_PATIENT = 2
TRAIN_ROWS = ROWS_PER_PATIENT * sum(PATIENTS.values())


def new_image(folder, name):
    """A small grey image of its own, for one row: a manifest lists each image once."""
    save_image(folder / "img" / f"{name}.png", (20, 20), "L")
    return f"img/{name}.png"


def train_test_rows(folder, patient_ids=True):
    """A manifest with only train and test rows: per label, PATIENTS[label] patients of
    ROWS_PER_PATIENT training images each, and one test image."""
    rows = []
    for label, prefix in ((NEG, "n"), (POS, "p")):
        for patient in range(PATIENTS[label]):
            pid = f"{prefix}{patient}" if patient_ids else ""
            rows += [(new_image(folder, f"{prefix}{patient}_{k}"), label, "train", "", pid)
                     for k in range(ROWS_PER_PATIENT)]
        rows.append((new_image(folder, f"{prefix}-test"), label, "test", "", f"{prefix}-test"))
    return rows


def val_rows(table):
    return table.index[table["split"] == "val"].tolist()


def test_missing_val_is_drawn_stratified_and_grouped(folder):
    written = read_manifest(write_rows(folder, train_test_rows(folder)), NEG, POS)
    table = read_manifest(folder / "manifest.csv", NEG, POS, seed=0)
    val = table[table["split"] == "val"]
    assert sorted(val["label"].unique()) == sorted([NEG, POS])
    assert len(val) == 2 * ROWS_PER_PATIENT  # one whole patient of each label
    train_patients = set(table.loc[table["split"] == "train", "patient_id"])
    assert train_patients and not train_patients & set(val["patient_id"])
    assert (table["split"] == "test").equals(written["split"] == "test")
    assert table.drop(columns="split").equals(written.drop(columns="split"))


def test_rows_without_patient_are_drawn_one_by_one(folder):
    table = read_manifest(write_rows(folder, train_test_rows(folder, patient_ids=False)), NEG, POS, seed=0)
    val = table[table["split"] == "val"]
    # 10% of 20 and of 6 single images (at least one): counted in images, not in pairs
    assert val["label"].value_counts().to_dict() == {NEG: 2, POS: 1}


def test_drawn_val_follows_the_seed(folder):
    manifest = write_rows(folder, train_test_rows(folder))
    first = val_rows(read_manifest(manifest, NEG, POS, seed=0))
    assert val_rows(read_manifest(manifest, NEG, POS, seed=0)) == first
    assert val_rows(read_manifest(manifest, NEG, POS, seed=1)) != first
    loaded = load_split(manifest, "val", NEG, POS, SIZE, 1, seed=0)
    assert loaded.rows.tolist() == first


def test_drawing_warns_with_counts_per_label(folder, caplog):
    manifest = write_rows(folder, train_test_rows(folder))
    with caplog.at_level("WARNING", logger="medxgan.data.manifest"):
        read_manifest(manifest, NEG, POS, seed=0)
    message = caplog.records[-1].getMessage()
    assert "manifest.csv" in message and f"moved 4 of {TRAIN_ROWS}" in message
    assert f"{NEG}: 2, {POS}: 2" in message


def test_manifest_with_val_rows_is_read_as_written(folder, caplog):
    rows = train_test_rows(folder)
    rows[0] = rows[0][:2] + ("val",) + rows[0][3:]
    manifest = write_rows(folder, rows)
    with caplog.at_level("WARNING", logger="medxgan.data.manifest"):
        table = read_manifest(manifest, NEG, POS, seed=0)
    assert not caplog.records
    assert table.equals(read_manifest(manifest, NEG, POS))
    assert table["split"].tolist() == [row[2] for row in rows]


def test_val_that_cannot_be_drawn_names_file_and_label(folder):
    # ROWS: one training patient of label NEG, none to spare for val
    with pytest.raises(ManifestError, match=rf"manifest\.csv.*'val'.*{NEG!r} has 1 training patient"):
        read_manifest(write_rows(folder, ROWS), NEG, POS, seed=0)
    only_test = [row[:2] + ("test",) + row[3:] for row in ROWS]
    with pytest.raises(ManifestError, match=r"manifest\.csv.*'val'.*'train' has no rows"):
        load_split(write_rows(folder, only_test), "test", NEG, POS, SIZE, 1, seed=0)


def test_two_training_patients_of_a_label_are_enough_to_draw_one(folder):
    # test rows first, so the training rows' index does not start at 0
    rows = [(new_image(folder, f"{label}-test"), label, "test", "", f"{label}-test") for label in (NEG, POS)]
    rows += [(new_image(folder, f"{label}{patient}_{k}"), label, "train", "", f"{label}{patient}")
             for label in (NEG, POS) for patient in (1, 2) for k in range(2)]
    table = read_manifest(write_rows(folder, rows), NEG, POS, seed=0)
    val = table[table["split"] == "val"]
    assert val["label"].value_counts().to_dict() == {NEG: 2, POS: 2}
    assert val.groupby("label")["patient_id"].nunique().to_dict() == {NEG: 1, POS: 1}


def test_a_label_absent_from_train_cannot_be_drawn(folder):
    rows = [(new_image(folder, f"n{patient}"), NEG, "train", "", f"n{patient}") for patient in range(3)]
    rows.append(("img/colour.png", POS, "test", "", "p-test"))
    with pytest.raises(ManifestError, match=rf"label {POS!r} has 0 training patient\(s\) or image\(s\), at least 2"):
        read_manifest(write_rows(folder, rows), NEG, POS, seed=0)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_a_mask_stored_as_zero_and_one_is_read_as_a_mask(folder, dtype):
    # Masks exported by segmentation tools often hold 0/1, not 0/255: any non-zero pixel is lesion.
    # In 16 bits a 1 is 1/257 on the 8-bit scale: kept as a float, not rounded away to 0.
    mask = np.zeros((MASK_SIDE, MASK_SIDE), dtype=dtype)
    mask[SQUARE] = 1
    Image.fromarray(mask).save(folder / "img" / "mask01.png")
    rows = [("img/colour.jpg", POS, "train", "img/mask01.png", "p2"), ("img/grey.png", NEG, "train", "", "p1")]
    images = load_split(write_rows(folder, rows), "train", NEG, POS, SIZE, 1)
    expected = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    rows_, columns = SQUARE
    expected[rows_.start // SCALE:rows_.stop // SCALE, columns.start // SCALE:columns.stop // SCALE] = True
    assert torch.equal(images.masks[0], expected)


# --- healthy twins ---------------------------------------------------------------------------

COLOUR_SIZE = (61, 45)  # img/colour.jpg's (width, height)


def write_twin_rows(folder, twin_of_positive="img/twin.png"):
    """ROWS with the optional twin column: the training positive img/colour.jpg (line 3) has a twin."""
    twins = ["", twin_of_positive, "", ""]
    manifest = folder / "manifest.csv"
    pd.DataFrame([(*row, twin) for row, twin in zip(ROWS, twins)],
                 columns=[*MANIFEST_COLUMNS, TWIN_COLUMN]).to_csv(manifest, index=False)
    return manifest


@pytest.fixture
def twin_folder(folder):
    save_image(folder / "img" / "twin.png", COLOUR_SIZE, "RGB")
    return folder


@pytest.mark.parametrize("channels", [1, 3])
def test_twins_are_loaded_beside_their_images(twin_folder, channels):
    data = load_split(write_twin_rows(twin_folder), "train", NEG, POS, SIZE, channels)
    assert data.has_twin.tolist() == [False, True, False]
    assert data.twins.shape == data.images.shape and data.twins.dtype == torch.float32
    expected = load_image(twin_folder / "img" / "twin.png", "", SIZE, channels)
    assert torch.equal(data.twins[1], torch.from_numpy(expected))
    assert not data.twins[0].any() and not data.twins[2].any()
    picked = data.subset(torch.tensor([1]))
    assert picked.has_twin.tolist() == [True] and torch.equal(picked.twins[0], data.twins[1])


def test_a_set_without_twins_holds_none():
    images = torch.zeros(2, 1, SIZE, SIZE)
    data = ImageSet(images, torch.ones(2, dtype=torch.long), torch.zeros(2, SIZE, SIZE, dtype=torch.bool),
                    torch.zeros(2, dtype=torch.bool), ["a", "b"], torch.arange(2))
    assert data.twins is None and data.has_twin.tolist() == [False, False]
    assert len(data.subset(~data.has_twin)) == 2  # has_twin picks images, as a mask does
    with pytest.raises(ValueError, match=r"^an ImageSet whose has_twin marks images needs their twins$"):
        ImageSet(images, data.labels, data.masks, data.has_mask, data.ids, data.rows, has_twin=torch.ones(2).bool())


@pytest.mark.parametrize("with_twins", [True, False])
def test_a_manifest_round_trips_with_and_without_the_twin_column(twin_folder, with_twins):
    manifest = write_twin_rows(twin_folder) if with_twins else write_rows(twin_folder, ROWS)
    out = twin_folder / "copy.csv"
    write_manifest(read_manifest(manifest, NEG, POS), out)
    assert out.read_text() == manifest.read_text()
    assert (TWIN_COLUMN in out.read_text().splitlines()[0]) == with_twins


def test_missing_twin_names_file_and_line(twin_folder):
    manifest = write_twin_rows(twin_folder, "img/no_twin.png")
    with pytest.raises(ManifestError, match=r"manifest\.csv, line 3: column 'healthy_twin_path': healthy twin file "
                                             r".*no_twin\.png not found"):
        read_manifest(manifest, NEG, POS)


def test_a_twin_of_another_size_names_file_line_and_sizes(twin_folder):
    save_image(twin_folder / "img" / "small_twin.png", (20, 20), "RGB")
    manifest = write_twin_rows(twin_folder, "img/small_twin.png")
    with pytest.raises(ManifestError, match=r"manifest\.csv, line 3: column 'healthy_twin_path': healthy twin "
                                             r".*small_twin\.png is 20x20 pixels, its image .*colour\.jpg is 61x45; "
                                             r"a twin must be the same image without the lesion$"):
        load_split(manifest, "train", NEG, POS, SIZE, 1)


def truncated_png(path, size):
    """A PNG whose header (and so its size) reads, but whose pixels end early."""
    save_image(path, size, "RGB")
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])


@pytest.mark.parametrize("broken", ["not an image", "truncated"])
def test_an_unreadable_twin_names_the_line_and_the_twin(twin_folder, broken):
    twin = twin_folder / "img" / "broken_twin.png"
    if broken == "truncated":
        truncated_png(twin, COLOUR_SIZE)  # its size matches: the pixels fail as they are read
    else:
        twin.write_bytes(b"not an image at all" * 10)
    manifest = write_twin_rows(twin_folder, "img/broken_twin.png")
    with pytest.raises(ManifestError, match=r"^.*manifest\.csv, line 3: cannot read healthy twin .*broken_twin\.png: "):
        load_split(manifest, "train", NEG, POS, SIZE, 1)


def test_a_twin_whose_image_cannot_be_read_names_the_image(twin_folder):
    (twin_folder / "img" / "garbage.png").write_bytes(b"not an image at all" * 10)
    with pytest.raises(ManifestError, match=r"^line 3: cannot read image .*garbage\.png: "):
        check_twin_size(twin_folder / "img" / "twin.png", twin_folder / "img" / "garbage.png", "line 3")
