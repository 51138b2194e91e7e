"""Tests for colordiff.io: reading every supported format and mode, refusing bad files, atomic writing."""

import copy
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from colordiff import io as cio
from colordiff.io import (
    DEFAULT_MAX_PIXELS,
    IMAGE_SUFFIXES,
    MIN_SIDE,
    ImageReadError,
    LoadedImage,
    atomic_write,
    is_image_path,
    output_suffix,
    read_image,
    write_image,
)

PHOTOS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "photos"
if not PHOTOS.is_dir():
    PHOTOS = Path("/work/shared/data/photos")


def pattern(h: int = 24, w: int = 32) -> np.ndarray:
    """A uint8 (H, W, 3) image with distinct, asymmetric pixel values (so flips and transposes show)."""
    y, x = np.mgrid[:h, :w]
    return np.stack([x * 7 % 256, y * 11 % 256, (x * y + 3 * x) % 256], axis=-1).astype(np.uint8)


def smooth(h: int = 32, w: int = 48) -> np.ndarray:
    """A uint8 (H, W, 3) smooth gradient, which lossy codecs reproduce closely."""
    y, x = np.mgrid[:h, :w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), np.full_like(x, 128)], axis=-1).astype(np.uint8)


def u8(x: np.ndarray) -> np.ndarray:
    """Float [0, 1] -> uint8, exactly inverting read_image's /255."""
    return np.rint(x * 255).astype(np.uint8)


def assert_one_line_error(err: ImageReadError, path: Path, *phrases: str) -> None:
    """The error names the file and every phrase, on a single line."""
    msg = str(err)
    assert msg == f"{err.path}: {err.reason}"
    assert err.path == path and path.name in msg
    assert "\n" not in msg
    for phrase in phrases:
        assert phrase in err.reason, (phrase, err.reason)


# -----------------------------------------------------------------------------
# reading: formats and modes


@pytest.mark.parametrize(
    "suffix, options, fmt",
    [
        (".png", {}, "PNG"),
        (".tif", {}, "TIFF"),
        (".TIFF", {"compression": "tiff_lzw"}, "TIFF"),
        (".bmp", {}, "BMP"),
        (".webp", {"lossless": True}, "WEBP"),
    ],
)
def test_lossless_formats_read_exactly(tmp_path, suffix, options, fmt):
    data = pattern()
    path = tmp_path / f"img{suffix}"
    Image.fromarray(data).save(path, **options)
    image = read_image(path)
    assert isinstance(image, LoadedImage)
    assert image.format == fmt and image.bit_depth == 8 and image.alpha is None and image.path == path
    assert image.rgb.dtype == np.float32 and image.rgb.shape == (24, 32, 3) and image.size == (32, 24)
    np.testing.assert_array_equal(u8(image.rgb), data)
    assert image.rgb.min() >= 0 and image.rgb.max() <= 1


@pytest.mark.parametrize("suffix, fmt", [(".jpg", "JPEG"), (".jpeg", "JPEG"), (".webp", "WEBP")])
def test_lossy_formats_read_approximately(tmp_path, suffix, fmt):
    data = smooth()
    path = tmp_path / f"img{suffix}"
    Image.fromarray(data).save(path, quality=95)
    image = read_image(path)
    assert image.format == fmt and image.rgb.shape == (32, 48, 3) and image.alpha is None
    assert np.abs(image.rgb * 255 - data).mean() < 2
    assert image.rgb[0, 0, 0] < 0.05 and image.rgb[0, -1, 0] > 0.95  # the gradient runs the right way


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp", ".tif"])
def test_gray_L_gives_equal_channels(tmp_path, suffix):
    gray = pattern()[..., 0]
    path = tmp_path / f"gray{suffix}"
    Image.fromarray(gray).save(path)
    image = read_image(path)
    assert image.rgb.shape == (24, 32, 3) and image.alpha is None and image.bit_depth == 8
    np.testing.assert_array_equal(image.rgb[..., 0], image.rgb[..., 1])
    np.testing.assert_array_equal(image.rgb[..., 0], image.rgb[..., 2])
    tol = 4 if suffix == ".jpg" else 0
    assert np.abs(u8(image.rgb[..., 0]).astype(int) - gray).max() <= tol


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif"])
def test_mode_1_bilevel(tmp_path, suffix):
    bits = (pattern()[..., 0] % 3 == 0).astype(np.uint8) * 255
    path = tmp_path / f"bits{suffix}"
    Image.fromarray(bits).convert("1").save(path)
    assert Image.open(path).mode == "1"
    image = read_image(path)
    np.testing.assert_array_equal(image.rgb[..., 1], bits / 255)
    assert set(np.unique(image.rgb)) == {0.0, 1.0}


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".gif"])
def test_palette_without_transparency(tmp_path, suffix):
    data = pattern()
    img = Image.fromarray(data).quantize(colors=16)
    path = tmp_path / f"pal{suffix}"
    img.save(path)
    assert Image.open(path).mode == "P"
    image = read_image(path)
    assert image.alpha is None
    np.testing.assert_array_equal(u8(image.rgb), np.asarray(img.convert("RGB")))


def test_16bit_png_keeps_precision(tmp_path):
    values = np.array([[1000, 65000, 0, 65535]] * 8 + [[1, 2, 3, 4]] * 4, dtype=np.uint16).repeat(3, axis=1)
    path = tmp_path / "g16.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "I;16"
    image = read_image(path)
    assert image.bit_depth == 16 and image.format == "PNG" and image.rgb.shape == (12, 12, 3)
    np.testing.assert_allclose(image.rgb[0, 0], 1000 / 65535, atol=1e-6)
    np.testing.assert_allclose(image.rgb[0, 3], 65000 / 65535, atol=1e-6)
    np.testing.assert_allclose(image.rgb[..., 0], values / 65535, atol=1e-6)  # 1/65535 steps survive
    np.testing.assert_array_equal(image.rgb[..., 0], image.rgb[..., 2])


@pytest.mark.parametrize("mode", ["I;16", "I;16B"])
def test_16bit_tiff(tmp_path, mode):
    values = np.tile(np.array([0, 1000, 40000, 65535], dtype=np.uint16), (8, 2))  # (8, 8)
    path = tmp_path / "g16.tif"
    # built from bytes: Pillow's convert("I;16B") clamps values to 255
    Image.frombytes(mode, (8, 8), values.astype(">u2" if mode == "I;16B" else "<u2").tobytes()).save(path)
    assert Image.open(path).mode == mode
    image = read_image(path)
    assert image.bit_depth == 16
    np.testing.assert_allclose(image.rgb[..., 1], values / 65535, atol=1e-6)


def test_int32_and_float_tiff_are_clamped(tmp_path):
    ints = np.tile(np.array([-5, 1000, 65535, 70000], dtype=np.int32), (8, 2))
    Image.fromarray(ints).save(tmp_path / "i.tif")
    image = read_image(tmp_path / "i.tif")
    np.testing.assert_allclose(image.rgb[0, :4, 0], [0, 1000 / 65535, 1, 1], atol=1e-6)
    assert image.bit_depth == 16

    floats = np.tile(np.array([-0.5, 0.25, 0.75, 2.0], dtype=np.float32), (8, 2))
    Image.fromarray(floats).save(tmp_path / "f.tif")
    image = read_image(tmp_path / "f.tif")
    np.testing.assert_allclose(image.rgb[0, :4, 2], [0, 0.25, 0.75, 1], atol=1e-7)


def test_rgba_la_and_palette_transparency_keep_alpha(tmp_path):
    data = pattern()
    alpha = (np.arange(24 * 32).reshape(24, 32) % 256).astype(np.uint8)

    Image.fromarray(np.dstack([data, alpha])).save(tmp_path / "rgba.png")
    image = read_image(tmp_path / "rgba.png")
    np.testing.assert_array_equal(u8(image.rgb), data)
    assert image.alpha is not None and image.alpha.dtype == np.float32 and image.alpha.shape == (24, 32)
    np.testing.assert_array_equal(u8(image.alpha), alpha)

    Image.fromarray(np.dstack([data[..., 0], alpha])).save(tmp_path / "la.png")
    image = read_image(tmp_path / "la.png")
    np.testing.assert_array_equal(u8(image.rgb[..., 2]), data[..., 0])
    np.testing.assert_array_equal(u8(image.alpha), alpha)

    pal = Image.fromarray(data).quantize(colors=8)
    clear = int(np.asarray(pal)[0, 0])  # the palette index of the top-left pixel becomes transparent
    pal.save(tmp_path / "p.png", transparency=clear)
    image = read_image(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    np.testing.assert_array_equal(image.alpha, (np.asarray(pal) != clear).astype(np.float32))
    assert 0 < image.alpha.mean() < 1

    Image.fromarray(data[..., 0]).save(tmp_path / "lt.png", transparency=int(data[0, 0, 0]))  # L with tRNS
    image = read_image(tmp_path / "lt.png")
    np.testing.assert_array_equal(image.alpha, (data[..., 0] != data[0, 0, 0]).astype(np.float32))


def test_cmyk_jpeg_reads_as_rgb(tmp_path):
    data = smooth()
    Image.fromarray(data).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    image = read_image(tmp_path / "cmyk.jpg")
    assert image.format == "JPEG" and image.rgb.shape == (32, 48, 3)
    assert np.abs(image.rgb * 255 - data).mean() < 3


def test_ycbcr_tiff_and_pa_mode(tmp_path):
    data = smooth()
    # Pillow 12 cannot read back the YCbCr TIFFs it writes (it decodes them as RGB and runs out of data), so the
    # converter gets the decoded YCbCr image directly
    rgb, alpha, depth = cio._to_arrays(Image.fromarray(data).convert("YCbCr"))
    assert np.abs(rgb * 255 - data).max() <= 3 and alpha is None and depth == 8  # only the YCbCr transforms' rounding

    # no format Pillow writes produces PA, so feed the converter directly
    pa = Image.fromarray(data).quantize(colors=8).convert("PA")
    pa.putalpha(77)
    rgb, alpha, depth = cio._to_arrays(pa)
    np.testing.assert_array_equal(u8(rgb), np.asarray(pa.convert("RGB")))
    np.testing.assert_array_equal(u8(alpha), np.full((32, 48), 77))
    assert depth == 8


def test_unsupported_mode_is_named(tmp_path):
    path = tmp_path / "lab.tif"
    Image.new("LAB", (16, 16)).save(path)
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert_one_line_error(info.value, path, "unsupported image mode", "'LAB'")


@pytest.mark.parametrize("orientation, corner", [(6, (0, -1)), (8, (-1, 0)), (3, (-1, -1)), (1, (0, 0))])
def test_exif_orientation_is_applied(tmp_path, orientation, corner):
    data = np.zeros((32, 64, 3), np.uint8)
    data[:8, :8] = (255, 0, 0)  # mark the stored top-left corner red
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "o.jpg"
    Image.fromarray(data).save(path, exif=exif.tobytes(), quality=95)
    image = read_image(path)
    rotated = orientation in (6, 8)
    assert image.rgb.shape[:2] == ((64, 32) if rotated else (32, 64))
    # 6 = rotate 90 cw to display: top-left -> top-right; 8 = 90 ccw: -> bottom-left; 3 = 180: -> bottom-right
    r, c = corner
    rows = slice(0, 8) if r == 0 else slice(-8, None)
    cols = slice(0, 8) if c == 0 else slice(-8, None)
    assert image.rgb[rows, cols, 0].mean() > 0.9 and image.rgb[rows, cols, 1].mean() < 0.1
    assert (image.rgb[..., 0] > 0.5).mean() < 0.05  # and nowhere else


def test_real_photos(tmp_path):
    for name, fmt in [("kodak/kodim23.png", "PNG"), ("public-domain/darknet_horses.jpg", "JPEG")]:
        image = read_image(PHOTOS / name)
        with Image.open(PHOTOS / name) as ref:
            expected = np.asarray(ref.convert("RGB"))
        assert image.format == fmt and image.alpha is None and image.bit_depth == 8
        assert image.size == (expected.shape[1], expected.shape[0])
        np.testing.assert_array_equal(u8(image.rgb), expected)

    # a real JPEG cut in half is refused at read time
    truncated = tmp_path / "horses.jpg"
    truncated.write_bytes((PHOTOS / "public-domain/darknet_horses.jpg").read_bytes()[:60_000])
    with pytest.raises(ImageReadError) as info:
        read_image(truncated)
    assert_one_line_error(info.value, truncated, "truncated or corrupt image data")


# -----------------------------------------------------------------------------
# reading: refusals


def test_missing_directory_and_empty(tmp_path):
    missing = tmp_path / "nope.png"
    with pytest.raises(ImageReadError) as info:
        read_image(missing)
    assert_one_line_error(info.value, missing, "no such file")

    with pytest.raises(ImageReadError) as info:
        read_image(tmp_path)
    assert_one_line_error(info.value, tmp_path, "is a directory")

    empty = tmp_path / "empty.jpg"
    empty.touch()
    with pytest.raises(ImageReadError) as info:
        read_image(empty)
    assert_one_line_error(info.value, empty, "empty file (0 bytes)")


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not an image\n")
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert_one_line_error(info.value, path, "not a recognised image format")
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_files(tmp_path, suffix):
    rng = np.random.default_rng(0)
    full = tmp_path / f"full{suffix}"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(full)
    half = tmp_path / f"half{suffix}"
    half.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    read_image(full)  # the intact file is fine
    with pytest.raises(ImageReadError) as info:
        read_image(half)
    assert_one_line_error(info.value, half, "truncated or corrupt image data: ")
    assert "truncated" in info.value.reason.split(": ", 1)[1]  # PIL's own message is kept after the colon


def test_too_many_pixels_checked_before_decoding(tmp_path):
    rng = np.random.default_rng(0)
    full = tmp_path / "big.png"
    Image.fromarray(rng.integers(0, 256, (100, 120, 3), dtype=np.uint8)).save(full)
    with pytest.raises(ImageReadError) as info:
        read_image(full, max_pixels=11_999)
    assert_one_line_error(info.value, full, "120 x 100 = 12000 pixels exceeds the limit of 11999", "decompression-bomb")
    assert read_image(full, max_pixels=12_000).size == (120, 100)

    # a truncated file reports the size problem, not the truncation: pixels were never decoded
    cut = tmp_path / "cut.png"
    cut.write_bytes(full.read_bytes()[:2000])
    with pytest.raises(ImageReadError, match="exceeds the limit"):
        read_image(cut, max_pixels=1000)
    assert DEFAULT_MAX_PIXELS == 100_000_000


def test_pil_decompression_bomb_guard_becomes_read_error(tmp_path, monkeypatch):
    path = tmp_path / "img.png"
    Image.fromarray(pattern(20, 20)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 150)  # PIL errors above 300 pixels, warns above 150
    assert Image.MAX_IMAGE_PIXELS == 150
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert_one_line_error(info.value, path, "decompression-bomb guard", "400 pixels")

    small = tmp_path / "small.png"
    Image.fromarray(pattern(16, 12)).save(small)  # 192 pixels: only PIL's warning
    with pytest.warns(Image.DecompressionBombWarning):
        assert read_image(small).size == (12, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning escalated by the filters is refused the same way
        with pytest.raises(ImageReadError, match="decompression-bomb guard"):
            read_image(small)


def test_too_small(tmp_path):
    path = tmp_path / "thin.png"
    Image.fromarray(pattern(20, 4)).save(path)
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert_one_line_error(info.value, path, "4 x 20 is smaller than the minimum side of 8")
    assert MIN_SIDE == 8
    assert read_image(path, min_side=4).size == (4, 20)


def test_error_attributes_and_copy(tmp_path):
    err = ImageReadError(str(tmp_path / "a.png"), "bad\nthing")
    assert err.path == tmp_path / "a.png" and err.reason == "bad thing"
    assert str(err) == f"{tmp_path / 'a.png'}: bad thing"
    clone = copy.deepcopy(err)
    assert type(clone) is ImageReadError and str(clone) == str(err) and clone.reason == err.reason


# -----------------------------------------------------------------------------
# writing


def test_write_png_round_trips_exactly(tmp_path):
    data = pattern()
    path = write_image(tmp_path / "a" / "b" / "out.png", data)  # parent folders are created
    assert path == tmp_path / "a" / "b" / "out.png"
    np.testing.assert_array_equal(np.asarray(Image.open(path)), data)
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.png"]  # no temp file left

    floats = data.astype(np.float32) / 255
    floats[0, 0] = [100.6 / 255, 100.4 / 255, 1.7]  # rounds to 101 and 100; out of range clips to 255
    write_image(path, floats)
    back = np.asarray(Image.open(path))
    np.testing.assert_array_equal(back[0, 0], [101, 100, 255])
    np.testing.assert_array_equal(back[1:], data[1:])


@pytest.mark.parametrize("suffix", [".jpg", ".JPEG", ".webp", ".tif", ".bmp"])
def test_write_other_formats(tmp_path, suffix):
    data = smooth()
    path = write_image(tmp_path / f"out{suffix}", data.astype(np.float64) / 255)
    image = read_image(path)
    assert image.format == cio._SAVE_FORMATS[suffix.lower()]
    lossy = suffix.lower() in (".jpg", ".jpeg", ".webp")
    assert np.abs(image.rgb * 255 - data).max() < (12 if lossy else 1e-3)


@pytest.mark.parametrize("suffix", [".png", ".webp", ".tif"])
def test_write_keeps_alpha(tmp_path, suffix):
    data = pattern()
    alpha = np.linspace(0, 1, 24 * 32, dtype=np.float32).reshape(24, 32)
    path = write_image(tmp_path / f"a{suffix}", data, alpha=alpha)
    image = read_image(path)
    assert image.alpha is not None
    np.testing.assert_array_equal(u8(image.alpha), u8(alpha))  # WebP stores alpha losslessly even when lossy
    if suffix != ".webp":
        np.testing.assert_array_equal(u8(image.rgb), data)


@pytest.mark.parametrize("suffix", [".jpg", ".bmp"])
def test_write_refuses_alpha_it_cannot_store(tmp_path, suffix):
    with pytest.raises(ValueError, match="alpha"):
        write_image(tmp_path / f"x{suffix}", pattern(), alpha=np.ones((24, 32), np.float32))
    assert list(tmp_path.iterdir()) == []


def test_write_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="suffix"):
        write_image(tmp_path / "x.gif", pattern())
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        write_image(tmp_path / "x.png", pattern()[..., :2])
    with pytest.raises(ValueError, match="NaN"):
        write_image(tmp_path / "x.png", np.full((8, 8, 3), np.nan))
    with pytest.raises(TypeError):
        write_image(tmp_path / "x.png", pattern().astype(np.int64))
    assert list(tmp_path.iterdir()) == []


def test_failed_save_leaves_no_files(tmp_path, monkeypatch):
    seen = []

    def broken_save(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"partial")  # fail halfway through, as a full disk would
        seen.append(Path(fp))
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        write_image(tmp_path / "out.png", pattern())
    assert list(tmp_path.iterdir()) == []  # neither target nor temp
    assert seen[0].parent == tmp_path and seen[0].name.startswith(".") and seen[0].name.endswith(".tmp")

    existing = tmp_path / "keep.png"
    existing.write_bytes(b"original")
    with pytest.raises(OSError):
        write_image(existing, pattern())
    assert existing.read_bytes() == b"original"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.png"]


def test_atomic_write(tmp_path):
    target = tmp_path / "sub" / "data.json"
    with atomic_write(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".") and tmp.name.endswith(".tmp")
        tmp.write_text("{}")
        assert not target.exists()  # nothing visible until the block succeeds
    assert target.read_text() == "{}"
    assert os.listdir(target.parent) == ["data.json"]

    with pytest.raises(RuntimeError):
        with atomic_write(target) as tmp:
            tmp.write_text('{"half":')
            raise RuntimeError("boom")
    assert target.read_text() == "{}" and os.listdir(target.parent) == ["data.json"]

    names = set()
    for _ in range(3):
        with atomic_write(target) as tmp:
            names.add(tmp.name)
            tmp.write_text("x")
    assert len(names) == 3  # unique per call


# -----------------------------------------------------------------------------
# suffixes


def test_is_image_path():
    assert IMAGE_SUFFIXES == {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp"}
    for name in ["a.jpg", "b.JPEG", "c.Png", "d.webp", "e.tif", "f.TIFF", "g.bmp", "dir/h.jpg"]:
        assert is_image_path(name), name
    for name in ["a.gif", "b.txt", "jpg", "c.jpg.tmp", "d"]:
        assert not is_image_path(name), name


@pytest.mark.parametrize(
    "name, fmt, has_alpha, expected",
    [
        ("a.jpg", "JPEG", False, ".jpg"),
        ("a.JPEG", "JPEG", False, ".JPEG"),
        ("a.jpg", "JPEG", True, ".png"),  # JPEG cannot keep alpha
        ("a.jpg", "MPO", False, ".png"),  # read_image reports MPO as JPEG; raw MPO is not kept
        ("a.png", "PNG", True, ".png"),
        ("a.webp", "WEBP", True, ".webp"),
        ("a.tif", "TIFF", False, ".tif"),
        ("a.tiff", "TIFF", True, ".tiff"),
        ("a.bmp", "BMP", False, ".png"),
        ("a.gif", "GIF", False, ".png"),
        ("a.jpg", "PNG", False, ".png"),  # a PNG misnamed .jpg
        ("a.png", "JPEG", False, ".png"),
    ],
)
def test_output_suffix(name, fmt, has_alpha, expected):
    assert output_suffix(Path("in") / name, fmt, has_alpha) == expected
