"""The formats medical images come in: DICOM and NIfTI files written here in their real layout
(pydicom, nibabel), JPEGs with an EXIF orientation, multi-frame files, all read by `open_image`
as every step reads images."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medxgan.data.imagefolder import import_folder
from medxgan.data.manifest import ManifestError, image_stem, is_image_name, load_split, open_image
from medxgan.data.manifest_check import check_manifest
from medxgan.data.medical_formats import PERCENTILE_WINDOW, nifti_slices

pydicom = pytest.importorskip("pydicom")
nibabel = pytest.importorskip("nibabel")

SIDE = 32


def ramp(side=SIDE) -> np.ndarray:
    """Stored values 0..2047 (11 bits), rising left to right and top to bottom."""
    return (np.add.outer(np.arange(side), np.arange(side)) * (2047 // (2 * side - 2))).astype(np.uint16)


def write_dicom(path, pixels: np.ndarray, frames: int = 1, **elements):
    """A Part 10 DICOM file (explicit VR little endian) holding uint16 `pixels`, as a scanner writes one."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SamplesPerPixel = "CT", 1
    ds.PhotometricInterpretation = elements.pop("PhotometricInterpretation", "MONOCHROME2")
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    for name, value in elements.items():
        setattr(ds, name, value)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def unit(path) -> np.ndarray:
    """What every step reads, back on [0, 1]."""
    return np.asarray(open_image(path, "here"), dtype=np.float64) / 255


def test_dicom_goes_through_rescale_then_the_files_window(tmp_path):
    raw = ramp()
    path = write_dicom(tmp_path / "ct.dcm", raw, RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=500,
                       WindowWidth=1000)
    hounsfield = raw * 2.0 - 1000
    expected = np.clip((hounsfield - 499.5) / 999 + 0.5, 0, 1)  # DICOM's linear window
    np.testing.assert_allclose(unit(path), expected, atol=1e-6)
    assert unit(path).min() == 0 and unit(path).max() == 1  # the window clips on both sides here


def test_dicom_without_a_window_gets_a_percentile_window_and_monochrome1_is_inverted(tmp_path):
    raw = ramp()
    plain = unit(write_dicom(tmp_path / "a.dcm", raw))
    low, high = np.percentile(raw.astype(float), PERCENTILE_WINDOW)
    np.testing.assert_allclose(plain, np.clip((raw - low) / (high - low), 0, 1), atol=1e-6)
    inverted = unit(write_dicom(tmp_path / "b.dcm", raw, PhotometricInterpretation="MONOCHROME1"))
    np.testing.assert_allclose(inverted, 1 - plain, atol=1e-6)  # high values are dark in MONOCHROME1


def test_a_dicom_file_is_recognised_by_its_content_and_listed_as_an_image(tmp_path):
    path = write_dicom(tmp_path / "IM0001", ramp())  # scanners often write no suffix
    assert unit(path).shape == (SIDE, SIDE)
    assert is_image_name(tmp_path / "x.DCM") and is_image_name(tmp_path / "x.nii.gz")
    assert not is_image_name(tmp_path / "x.gz")


def test_multi_frame_dicom_is_refused_with_what_to_do(tmp_path):
    path = write_dicom(tmp_path / "cine.dcm", np.stack([ramp()] * 3), frames=3)
    with pytest.raises(ManifestError, match=r"cine\.dcm: it has 3 frames; .*export the frames you want"):
        open_image(path, "line 2")


def test_a_broken_dicom_names_the_file(tmp_path):
    path = tmp_path / "broken.dcm"
    path.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00" * 10)
    with pytest.raises(ManifestError, match=r"^line 4: cannot read image .*broken\.dcm"):
        open_image(path, "line 4")


def write_nifti(path, array: np.ndarray, cal=(0.0, 0.0)):
    image = nibabel.Nifti1Image(array.astype(np.float32), affine=np.eye(4))
    image.header["cal_min"], image.header["cal_max"] = cal
    nibabel.save(image, path)
    return path


def test_a_2d_nifti_is_shown_with_x_left_to_right_and_y_upwards(tmp_path):
    array = np.zeros((SIDE, SIDE, 1))  # (x, y, one slice)
    array[0, SIDE - 1] = 100.0  # the first x, the last y: the top-left corner as shown
    array[SIDE - 1, 0] = 50.0   # the last x, the first y: the bottom-right corner
    shown = unit(write_nifti(tmp_path / "slice.nii.gz", array, cal=(0.0, 100.0)))
    assert shown[0, 0] == 1.0 and shown[-1, -1] == pytest.approx(0.5)
    assert shown.sum() == pytest.approx(1.5)


def test_a_whole_nifti_volume_is_refused_with_how_to_name_a_slice(tmp_path):
    path = write_nifti(tmp_path / "brain.nii", np.zeros((SIDE, SIDE, 5)))
    with pytest.raises(ManifestError, match=r"shape \(32, 32, 5\); name one slice of it as .*#slice=K"):
        open_image(path, "here")


def volume(slices: int = 6) -> np.ndarray:
    """(x, y, z) voxels whose slice k across z holds a square at a place and brightness of its own."""
    voxels = np.zeros((SIDE, SIDE, slices))
    for k in range(slices):
        voxels[2 + 3 * k: 8 + 3 * k, 4:12, k] = 10.0 * (k + 1)
    return voxels


def write_manifest(folder, rows) -> Path:
    table = pd.DataFrame(rows, columns=["path", "label", "split", "mask_path", "patient_id"])
    table.to_csv(folder / "manifest.csv", index=False)
    return folder / "manifest.csv"


def test_a_manifest_lists_slices_of_a_volume_with_their_masks_from_a_mask_volume(tmp_path):
    write_nifti(tmp_path / "brain.nii.gz", volume())
    write_nifti(tmp_path / "lesion.nii.gz", (volume() > 0).astype(np.float32))
    rows = [(f"brain.nii.gz#slice={k}", "tumor" if k % 2 else "no_tumor", "test",
             f"lesion.nii.gz#slice={k}" if k % 2 else "", "p1") for k in range(6)]
    write_nifti(tmp_path / "cube.nii.gz", volume(SIDE))
    rows.append(("cube.nii.gz#axis=0,slice=5", "no_tumor", "test", "", "p2"))
    data = load_split(write_manifest(tmp_path, rows), "test", "no_tumor", "tumor", SIDE, 1)
    window = dict(nifti_slices(tmp_path / "brain.nii.gz", 2))  # the volume's own window, as explain-images reads it
    for k in range(6):
        np.testing.assert_allclose(data.images[k, 0].numpy(), window[k] * 2 - 1, atol=1e-6)
        assert data.has_mask[k] == bool(k % 2)
        assert data.masks[k].sum() == (48 if k % 2 else 0)  # that slice's 6x8 square, not another slice's
    across_x = dict(nifti_slices(tmp_path / "cube.nii.gz", 0))[5]
    np.testing.assert_allclose(data.images[6, 0].numpy(), across_x * 2 - 1, atol=1e-6)


def test_a_slice_beyond_its_volume_names_the_line_and_the_slices_there_are(tmp_path):
    write_nifti(tmp_path / "brain.nii.gz", volume())
    manifest = write_manifest(tmp_path, [("brain.nii.gz#slice=2", "no_tumor", "test", "", ""),
                                         ("brain.nii.gz#slice=9", "tumor", "test", "", "")])
    with pytest.raises(ManifestError, match=r"line 3: cannot read image .*slice 9 is beyond the volume: its axis 2 "
                                            r"has 6 slice\(s\) \(0 to 5\)"):
        load_split(manifest, "test", "no_tumor", "tumor", SIDE, 1)


def test_a_slice_of_a_file_that_is_not_a_volume_says_how_slices_are_named(tmp_path):
    Image.fromarray(np.zeros((SIDE, SIDE), dtype=np.uint8)).save(tmp_path / "scan.png")
    manifest = write_manifest(tmp_path, [("scan.png#slice=2", "no_tumor", "test", "", "")])
    with pytest.raises(ManifestError, match=r"line 2: .*not found \(one slice of a NIfTI volume is named"):
        load_split(manifest, "test", "no_tumor", "tumor", SIDE, 1)


@pytest.mark.parametrize("listed, missing", [("gone.png", "gone.png"), ("gone.nii.gz#slice=2", "gone.nii.gz")])
def test_a_missing_file_or_volume_is_named_without_the_slice_hint(tmp_path, listed, missing):
    manifest = write_manifest(tmp_path, [(listed, "no_tumor", "test", "", "")])
    with pytest.raises(ManifestError, match=rf"line 2: column 'path': image file {tmp_path / missing} not found$"):
        load_split(manifest, "test", "no_tumor", "tumor", SIDE, 1)


def write_twin_manifest(folder, twin: str) -> Path:
    """A positive slice of brain.nii.gz with the healthy twin `twin`, and a negative slice without one."""
    table = pd.DataFrame([("brain.nii.gz#slice=1", "tumor", "test", "", "p1", twin),
                          ("brain.nii.gz#slice=0", "no_tumor", "test", "", "p1", "")],
                         columns=["path", "label", "split", "mask_path", "patient_id", "healthy_twin_path"])
    table.to_csv(folder / "manifest.csv", index=False)
    return folder / "manifest.csv"


def test_a_slices_healthy_twin_is_the_same_slice_of_a_healthy_volume(tmp_path):
    write_nifti(tmp_path / "brain.nii.gz", volume())
    write_nifti(tmp_path / "healthy.nii.gz", volume() * (np.arange(6) != 1))  # slice 1 without its square
    data = load_split(write_twin_manifest(tmp_path, "healthy.nii.gz#slice=1"), "test", "no_tumor", "tumor", SIDE, 1)
    assert data.has_twin.tolist() == [True, False]
    healthy = dict(nifti_slices(tmp_path / "healthy.nii.gz", 2))[1]  # windowed with its own volume
    np.testing.assert_allclose(data.twins[0, 0].numpy(), healthy * 2 - 1, atol=1e-6)
    assert not data.twins[1].any()


@pytest.mark.parametrize("twin, shape, message", [
    ("healthy.nii.gz#slice=1", (SIDE, 20, 6), r"line 2: column 'healthy_twin_path': healthy twin .*healthy\.nii\.gz"
                                              r"#slice=1 is 32x20 pixels, its image .*brain\.nii\.gz#slice=1 is 32x32"),
    ("healthy.nii.gz#slice=9", (SIDE, SIDE, 6), r"line 2: cannot read healthy twin .*healthy\.nii\.gz#slice=9: "
                                                r"slice 9 is beyond the volume"),
])
def test_a_twin_slice_of_another_size_or_beyond_its_volume_names_the_line(tmp_path, twin, shape, message):
    write_nifti(tmp_path / "brain.nii.gz", volume())
    write_nifti(tmp_path / "healthy.nii.gz", np.ones(shape))
    with pytest.raises(ManifestError, match="^" + r".*manifest\.csv, " + message):
        load_split(write_twin_manifest(tmp_path, twin), "test", "no_tumor", "tumor", SIDE, 1)


@pytest.mark.parametrize("name, stem", [
    ("scan.nii.gz", "scan"), ("Scan.NII.GZ", "Scan"), ("chest.PNG", "chest"), ("ct.dcm", "ct"),
    ("scan.nii.gz#slice=7", "scan_slice007"), ("scan.nii#axis=0,slice=12", "scan_axis0_slice012"),
])
def test_an_image_stem_drops_its_suffix_in_any_case_and_names_a_slice(name, stem):
    assert image_stem(Path("data") / name) == stem


def test_slices_of_one_volume_in_two_splits_fail_the_manifest_check(tmp_path):
    splits = {"a": "train", "b": "val", "c": "test"}
    for scale, name in enumerate(splits, start=1):
        write_nifti(tmp_path / f"{name}.nii.gz", volume() * scale)
    rows = [(f"{name}.nii.gz#slice={k}", label, split, "", "")
            for name, split in splits.items() for k, label in ((0, "no_tumor"), (1, "tumor"))]
    Image.fromarray(np.zeros((SIDE, SIDE), dtype=np.uint8)).save(tmp_path / "flat.png")
    manifest = write_manifest(tmp_path, rows + [("flat.png", "no_tumor", "test", "", "")])  # pictures beside slices
    assert check_manifest(manifest, "no_tumor", "tumor", SIDE, seed=0)["rows"] == 7  # one volume per split passes
    rows[1] = ("c.nii.gz#slice=4", "tumor", "train", "", "")  # a slice of c joins train
    with pytest.raises(ManifestError, match=r"slices of volume .*c\.nii\.gz are in splits test, train \(lines "
                                            r"3, 6, 7\): keep a volume's slices in one split"):
        check_manifest(write_manifest(tmp_path, rows), "no_tumor", "tumor", SIDE, seed=0)


def test_exif_orientation_is_applied(tmp_path):
    picture = np.zeros((SIDE, 2 * SIDE), dtype=np.uint8)  # wide, bright on its left
    picture[:, :8] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display", as a phone held upright writes it
    Image.fromarray(picture).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    shown = unit(tmp_path / "phone.jpg")
    assert shown.shape == (2 * SIDE, SIDE)  # stands upright
    assert shown[:8].mean() > 0.9 and shown[-8:].mean() < 0.1  # the bright side is now on top


def test_a_multi_frame_gif_is_refused_and_a_single_frame_one_is_read(tmp_path):
    frames = [Image.fromarray(np.full((SIDE, SIDE), v, dtype=np.uint8)) for v in (0, 255)]
    frames[0].save(tmp_path / "two.gif", save_all=True, append_images=frames[1:])
    frames[1].save(tmp_path / "one.gif")
    with pytest.raises(ManifestError, match=r"^here: cannot read image .*two\.gif: it has 2 frames; medxgan reads one "
                                            r"image per file: save the frame you want on its own$"):
        open_image(tmp_path / "two.gif", "here")
    assert unit(tmp_path / "one.gif").min() == 1.0


def test_import_folder_prepares_dicom_and_nifti_like_pictures(tmp_path):
    root = tmp_path / "scans"
    for split, count in (("train", 5), ("test", 2)):
        for cls, shift in (("normal", 0), ("covid", 300)):
            (root / split / cls).mkdir(parents=True)
            for i in range(count):
                write_dicom(root / split / cls / f"{cls}{i}.dcm", ramp() + shift + 10 * i, WindowCenter=1000,
                            WindowWidth=2000)
    write_nifti(root / "test" / "covid" / "extra.nii.gz", np.ones((SIDE, SIDE)) * 7)
    manifest = import_folder(root, "normal", "covid", tmp_path / "mine", SIDE, 1, val_fraction=0.2, seed=0)
    data = load_split(manifest, "test", "normal", "covid", SIDE, 1)
    assert sorted(data.ids) == ["images/test/covid/covid0.png", "images/test/covid/covid1.png",
                                "images/test/covid/extra.png", "images/test/normal/normal0.png",
                                "images/test/normal/normal1.png"]
    covid0 = data.images[data.ids.index("images/test/covid/covid0.png"), 0].numpy()
    expected = np.clip(((ramp() + 300.0) - 999.5) / 1999 + 0.5, 0, 1) * 2 - 1  # the file's window, on [-1, 1]
    np.testing.assert_allclose(covid0, expected, atol=2 / 65535)


def test_import_folder_makes_a_row_per_slice_and_keeps_each_volume_in_one_split(tmp_path):
    root = tmp_path / "scans"
    for split, count in (("train", 4), ("test", 1)):
        for cls, scale in (("normal", 1.0), ("tumor", 3.0)):
            (root / split / cls).mkdir(parents=True)
            (root / "masks" / split / cls).mkdir(parents=True)
            for i in range(count):
                write_nifti(root / split / cls / f"{cls}{i}.nii.gz", volume() * scale + i)
                write_nifti(root / "masks" / split / cls / f"{cls}{i}.nii.gz", (volume() > 0).astype(np.float32))
    manifest = import_folder(root, "normal", "tumor", tmp_path / "mine", SIDE, 1, val_fraction=0.25, seed=0,
                             slices=slice(1, 4))
    table = pd.read_csv(manifest, keep_default_na=False)
    assert len(table) == 10 * 3  # ten volumes, slices 1, 2 and 3 of each
    assert table.groupby("patient_id")["split"].nunique().max() == 1  # a volume's slices share a split
    assert set(table.groupby("patient_id").size()) == {3}
    assert (table.split == "val").sum() == 2 * 3  # one volume per class drawn whole into validation
    assert table.path.str.endswith(("_slice001.png", "_slice002.png", "_slice003.png")).all()
    test = load_split(manifest, "test", "normal", "tumor", SIDE, 1)
    assert test.has_mask.all() and (test.masks.sum(dim=(1, 2)) == 48).all()  # each slice its own mask slice
