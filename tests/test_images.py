"""Reading image files: 8-bit as before, 16-bit by bit depth, alpha onto black, palettes, a minimum size."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medxgan.data.imagefolder import import_folder
from medxgan.data.manifest import MANIFEST_COLUMNS, MIN_IMAGE_SIDE, ManifestError, load_image, load_split, open_image

SIZE = 32
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")  # how PIL may open a 16-bit greyscale PNG
TWELVE_BIT_TOP = 4095
DEPTH_TOLERANCE = 1e-6
HALF_OPAQUE = 128


def save_16_bit(path, values: np.ndarray):
    """A real 16-bit greyscale PNG; checks it reopens as one."""
    Image.fromarray(values.astype(np.uint16)).save(path)
    with Image.open(path) as image:
        assert image.mode in SIXTEEN_BIT_MODES
    return path


def twelve_bit_ramp(side=64) -> np.ndarray:
    """0..4095 across the image: 12-bit data as scanners store it, in 16 bits."""
    return np.tile(np.linspace(0, TWELVE_BIT_TOP, side).round(), (side, 1))


def old_read(path, size, channels) -> np.ndarray:
    """How images were read before deep images were handled: PIL's own conversion."""
    with Image.open(path) as image:
        pixels = image.convert({1: "L", 3: "RGB"}[channels]).resize((size, size), Image.Resampling.BILINEAR)
    array = np.asarray(pixels, dtype=np.float32) / 127.5 - 1
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


# --- 16-bit greyscale --------------------------------------------------------------------

def test_16_bit_png_is_scaled_by_its_bit_depth_not_clipped(tmp_path):
    values = twelve_bit_ramp(SIZE)
    read = load_image(save_16_bit(tmp_path / "ramp.png", values), "here", SIZE, 1)
    np.testing.assert_allclose(read[0], values / 65535 * 2 - 1, atol=DEPTH_TOLERANCE)
    assert read.min() == pytest.approx(-1) and read.max() == pytest.approx(TWELVE_BIT_TOP / 65535 * 2 - 1)
    assert read.max() < -0.87  # PIL's convert("L") made most of it white
    assert (old_read(tmp_path / "ramp.png", SIZE, 1) == 1).mean() > 0.5


def test_16_bit_full_range_spans_minus_one_to_one(tmp_path):
    values = np.zeros((SIZE, SIZE))
    values[:, SIZE // 2:] = 65535
    read = load_image(save_16_bit(tmp_path / "halves.png", values), "here", SIZE, 1)
    assert read[0, :, 0].tolist() == [-1] * SIZE and read[0, :, -1].tolist() == [1] * SIZE


def test_16_bit_is_resized_as_floats(tmp_path):
    """A level between two 8-bit steps survives resizing: 8-bit resizing would round it."""
    level = 1000  # 3.89 on the 8-bit scale
    read = load_image(save_16_bit(tmp_path / "flat.png", np.full((64, 48), level)), "here", SIZE, 1)
    np.testing.assert_allclose(read, level / 65535 * 2 - 1, atol=DEPTH_TOLERANCE)


def test_big_endian_16_bit_reads_like_little_endian(tmp_path):
    values = twelve_bit_ramp(SIZE).astype(">u2")
    Image.frombytes("I;16B", (SIZE, SIZE), values.tobytes()).save(tmp_path / "big.png")
    read = load_image(tmp_path / "big.png", "here", SIZE, 1)
    np.testing.assert_allclose(read[0], values / 65535 * 2 - 1, atol=DEPTH_TOLERANCE)


def test_signed_slice_is_windowed_to_its_own_range(tmp_path):
    values = np.tile(np.linspace(-1000, 3000, SIZE).round(), (SIZE, 1)).astype(np.int32)
    Image.fromarray(values).save(tmp_path / "slice.tif")  # mode I, int32: beyond what a PNG holds
    read = load_image(tmp_path / "slice.tif", "here", SIZE, 1)
    np.testing.assert_allclose(read[0], (values + 1000) / 4000 * 2 - 1, atol=DEPTH_TOLERANCE)


def test_16_bit_reaching_its_top_is_still_scaled_by_bit_depth(tmp_path):
    """65535 is the deepest value a 16-bit image holds, not a sign of another scale."""
    values = np.full((SIZE, SIZE), 1000)
    values[:, SIZE // 2:] = 65535
    read = load_image(save_16_bit(tmp_path / "top.png", values), "here", SIZE, 1)
    np.testing.assert_allclose(read[0], values / 65535 * 2 - 1, atol=DEPTH_TOLERANCE)


def test_a_float_image_is_windowed_to_its_own_range(tmp_path):
    """Floats carry no bit depth: values in 0..1 span the whole range, like any other float slice."""
    values = np.tile(np.linspace(0.0, 1.0, SIZE), (SIZE, 1)).astype(np.float32)
    Image.fromarray(values).save(tmp_path / "float.tif")  # mode F
    read = load_image(tmp_path / "float.tif", "here", SIZE, 1)
    np.testing.assert_allclose(read[0], values * 2 - 1, atol=DEPTH_TOLERANCE)


def test_a_slice_spanning_all_of_int32_is_windowed_without_overflow(tmp_path):
    values = np.tile(np.linspace(-2**31, 2**31 - 1, SIZE), (SIZE, 1)).astype(np.int64)
    Image.fromarray(values.astype(np.int32)).save(tmp_path / "wide.tif")
    read = load_image(tmp_path / "wide.tif", "here", SIZE, 1)
    np.testing.assert_allclose(read[0], (values + 2**31) / (2**32 - 1) * 2 - 1, atol=DEPTH_TOLERANCE)


@pytest.mark.parametrize("values", [np.full((SIZE, SIZE), 0.25, dtype=np.float32),
                                    np.full((SIZE, SIZE), -5, dtype=np.int32)], ids=["float", "signed"])
def test_a_flat_deep_slice_reads_as_black(tmp_path, values):
    """No window to stretch: the slice carries no contrast, and reads as black, not as NaN."""
    Image.fromarray(values).save(tmp_path / "flat.tif")
    read = load_image(tmp_path / "flat.tif", "here", SIZE, 1)
    assert (read == -1).all()


def test_rgb_wanted_from_16_bit_grey_repeats_it(tmp_path):
    read = load_image(save_16_bit(tmp_path / "ramp.png", twelve_bit_ramp()), "here", SIZE, 3)
    assert read.shape == (3, SIZE, SIZE)
    assert (read[0] == read[1]).all() and (read[0] == read[2]).all() and read.max() < -0.87


def test_16_bit_mask_is_read_without_clipping(tmp_path):
    mask = np.zeros((SIZE, SIZE))
    mask[8:16, 8:16] = 65535
    save_16_bit(tmp_path / "mask.png", mask)
    save_16_bit(tmp_path / "image.png", twelve_bit_ramp(SIZE))
    manifest = tmp_path / "manifest.csv"
    row = ("image.png", "b", "test", "mask.png", "")
    pd.DataFrame([row], columns=list(MANIFEST_COLUMNS)).to_csv(manifest, index=False)
    data = load_split(manifest, "test", "a", "b", SIZE, 1)
    assert data.masks[0].sum() == 64 and data.masks[0, 8:16, 8:16].all()


# --- 8-bit, alpha, palettes --------------------------------------------------------------

@pytest.mark.parametrize("mode", ["L", "RGB"])
@pytest.mark.parametrize("channels", [1, 3])
def test_8_bit_images_read_exactly_as_before(tmp_path, mode, channels):
    rng = np.random.default_rng(1)
    shape = (37, 50) if mode == "L" else (37, 50, 3)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(tmp_path / "eight.png")
    read = load_image(tmp_path / "eight.png", "here", SIZE, channels)
    assert read.dtype == np.float32 and np.array_equal(read, old_read(tmp_path / "eight.png", SIZE, channels))


@pytest.mark.parametrize("mode, colour", [("RGBA", (255, 255, 255, HALF_OPAQUE)), ("LA", (255, HALF_OPAQUE))])
def test_alpha_is_composited_onto_black(tmp_path, mode, colour):
    image = Image.new(mode, (SIZE, SIZE), colour)
    image.putpixel((0, 0), (255,) * (len(colour) - 1) + (0,))  # fully transparent white: black
    image.save(tmp_path / "alpha.png")
    read = load_image(tmp_path / "alpha.png", "here", SIZE, 1)
    assert read[0, 0, 0] == -1
    np.testing.assert_allclose(read[0, 1:, 1:], HALF_OPAQUE / 127.5 - 1, atol=DEPTH_TOLERANCE)  # mid-grey


def test_palette_image_is_read_through_its_palette(tmp_path):
    colours = Image.fromarray(np.random.default_rng(2).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    palette = colours.quantize(16)
    palette.save(tmp_path / "palette.png")
    with Image.open(tmp_path / "palette.png") as reopened:
        assert reopened.mode == "P"
    expected = np.asarray(palette.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR), np.float32)
    read = load_image(tmp_path / "palette.png", "here", SIZE, 3)
    assert np.array_equal(read, expected.transpose(2, 0, 1) / 127.5 - 1)


def test_transparent_palette_entry_reads_as_black(tmp_path):
    image = Image.new("P", (SIZE, SIZE), 1)
    image.putpalette([255, 255, 255, 200, 200, 200])
    image.putpixel((0, 0), 0)
    image.info["transparency"] = 0
    image.save(tmp_path / "transparent.png", transparency=0)
    read = load_image(tmp_path / "transparent.png", "here", SIZE, 1)
    assert read[0, 0, 0] == -1 and read[0, -1, -1] == pytest.approx(200 / 127.5 - 1)


def random_image(mode: str) -> Image.Image:
    bands = len(Image.new(mode, (1, 1)).getbands())
    pixels = np.random.default_rng(4).integers(0, 256, (40, 40, bands), dtype=np.uint8)
    if mode == "1":
        return Image.fromarray(pixels[..., 0]).convert("1")
    return Image.fromarray(pixels[..., 0] if bands == 1 else pixels, mode if bands > 1 else None)


@pytest.mark.parametrize("mode, ext, read_as", [("L", "png", "L"), ("RGB", "png", "RGB"), ("1", "png", "L"),
                                                ("CMYK", "jpg", "RGB"), ("YCbCr", "tif", "RGB"),
                                                ("P", "png", "RGB")])
def test_every_8_bit_mode_opens_as_grey_or_colour(tmp_path, mode, ext, read_as):
    image = random_image("RGB").quantize(16) if mode == "P" else random_image(mode)
    image.save(tmp_path / f"image.{ext}")
    opened = open_image(tmp_path / f"image.{ext}", "here")
    with Image.open(tmp_path / f"image.{ext}") as stored:
        assert stored.mode == mode
        expected = np.asarray(stored.convert(read_as))
    assert opened.mode == read_as and np.array_equal(np.asarray(opened), expected)


def test_a_palette_image_with_an_alpha_band_is_composited_onto_black(tmp_path):
    indices = np.ones((40, 40), dtype=np.uint8)  # red ...
    indices[5, 5] = 2  # ... one green pixel ...
    alpha = np.full((40, 40), 255, dtype=np.uint8)
    alpha[0, 0] = 0  # ... and one transparent one
    image = Image.frombytes("PA", (40, 40), np.stack([indices, alpha], axis=-1).tobytes())
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0])
    image.save(tmp_path / "pa.tif")
    with Image.open(tmp_path / "pa.tif") as stored:
        assert stored.mode == "PA"
    opened = open_image(tmp_path / "pa.tif", "here")
    assert opened.mode == "RGB"
    assert (opened.getpixel((0, 0)), opened.getpixel((5, 5)), opened.getpixel((9, 9))) == ((0, 0, 0), (0, 255, 0),
                                                                                          (255, 0, 0))


# --- size and errors ---------------------------------------------------------------------

@pytest.mark.parametrize("size", [(1, 1), (MIN_IMAGE_SIDE - 1, 40), (40, MIN_IMAGE_SIDE - 1)])
def test_too_small_image_is_refused_naming_file_and_size(tmp_path, size):
    Image.new("L", size, 128).save(tmp_path / "icon.png")
    with pytest.raises(ManifestError, match=rf"^line 7: image .*icon\.png is {size[0]}x{size[1]} pixels"):
        load_image(tmp_path / "icon.png", "line 7", SIZE, 1)


def test_smallest_allowed_image_is_read(tmp_path):
    Image.new("L", (MIN_IMAGE_SIDE, MIN_IMAGE_SIDE), 0).save(tmp_path / "small.png")
    assert open_image(tmp_path / "small.png", "here").size == (MIN_IMAGE_SIDE, MIN_IMAGE_SIDE)


def test_unreadable_file_names_where_and_file(tmp_path):
    (tmp_path / "garbage.png").write_bytes(b"not an image" * 10)
    with pytest.raises(ManifestError, match=r"^line 3: cannot read image .*garbage\.png"):
        load_image(tmp_path / "garbage.png", "line 3", SIZE, 1)


# --- import-folder -----------------------------------------------------------------------

def test_16_bit_images_are_imported_without_clipping(tmp_path):
    root = tmp_path / "scans"
    for split, count in (("train", 5), ("test", 2)):
        for cls in ("normal", "covid"):
            (root / split / cls).mkdir(parents=True)
            for i in range(count):
                save_16_bit(root / split / cls / f"{cls}{i}.png", twelve_bit_ramp() + 10 * i)
    manifest = import_folder(root, "normal", "covid", tmp_path / "mine", SIZE, 1, val_fraction=0.2, seed=0)
    with Image.open(tmp_path / "mine" / "images" / "test" / "covid" / "covid1.png") as prepared:
        assert prepared.mode in SIXTEEN_BIT_MODES  # 16 bits kept
    data = load_split(manifest, "test", "normal", "covid", SIZE, 1)
    source = load_image(root / "test" / "covid" / "covid1.png", "here", SIZE, 1)
    index = data.ids.index("images/test/covid/covid1.png")
    np.testing.assert_allclose(data.images[index].numpy(), source, atol=1 / 65535)
    assert data.images.max() < -0.87
