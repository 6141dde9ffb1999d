"""The formats medical images come in: DICOM and NIfTI files written here in their real layout
(pydicom, nibabel), JPEGs with an EXIF orientation, multi-frame files, all read by `open_image`
as every step reads images."""

import numpy as np
import pytest
from PIL import Image

from medxgan.data.imagefolder import import_folder
from medxgan.data.manifest import ManifestError, is_image_name, load_split, open_image
from medxgan.data.medical_formats import PERCENTILE_WINDOW

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


def test_a_nifti_volume_is_refused_with_what_to_do(tmp_path):
    path = write_nifti(tmp_path / "brain.nii", np.zeros((SIDE, SIDE, 5)))
    with pytest.raises(ManifestError, match=r"shape \(32, 32, 5\); .*export the slices you want"):
        open_image(path, "here")


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
    with pytest.raises(ManifestError, match="it has 2 frames"):
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
