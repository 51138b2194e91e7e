"""Full-resolution work in row tiles (colordiff/images.py): the same numbers as the whole-image color math."""

import numpy as np
import PIL.Image
import pytest
import torch

from colordiff import images as im
from colordiff.color import gray_from_luminance, merge_luminance, split_luminance


@pytest.fixture
def small_tiles(monkeypatch):
    monkeypatch.setattr(im, "TILE_PIXELS", 500)  # many tiles, and tiles that end mid-row multiples


def _photo(height=61, width=83, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("kind", ["uint8", "uint16", "float32", "gray2d", "pil", "tensor"])
def test_luminance_of_equals_the_whole_image_conversion(small_tiles, kind):
    u8 = _photo()
    whole_rgb = torch.from_numpy(u8.astype(np.float32) / 255).permute(2, 0, 1)[None]
    image = {"uint8": u8, "uint16": u8.astype(np.uint16) * 257, "float32": u8.astype(np.float32) / 255,
             "gray2d": u8[..., 0], "pil": PIL.Image.fromarray(u8), "tensor": whole_rgb[0]}[kind]
    if kind == "gray2d":
        whole_rgb = whole_rgb[:, :1].expand(-1, 3, -1, -1)
    expected = split_luminance(whole_rgb)[0]  # (1, 1, H, W)
    L = im.luminance_of(image)
    assert L.shape == (1, 1, 61, 83) and L.dtype == torch.float32
    torch.testing.assert_close(L, expected, rtol=0, atol=2e-5)  # pow may differ by an ulp at vector-loop tails


def test_working_gray_equals_resizing_the_three_channel_gray(small_tiles):
    L = im.luminance_of(_photo(120, 90))
    expected = im.resize(gray_from_luminance(L), (64, 48))
    gray = im.working_gray(L, (64, 48))
    assert gray.shape == (1, 3, 64, 48)
    torch.testing.assert_close(gray, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("model_size", [(16, 24), (61, 83), (20, 83)])
def test_tiled_merge_equals_merge_luminance(small_tiles, model_size):
    torch.manual_seed(0)
    L = im.luminance_of(_photo())  # (1, 1, 61, 83)
    ab = (torch.rand(1, 2, *model_size) - 0.5) * 160  # strong chroma: much of it out of gamut
    expected = merge_luminance(L, ab)[0]  # (3, H, W)
    pt = im.merge_into(L, ab, "pt")
    torch.testing.assert_close(pt, expected, rtol=0, atol=5e-5)  # the gamut bisection amplifies ulps
    np.testing.assert_array_equal(im.merge_into(L, ab, "np"), pt.permute(1, 2, 0).numpy())
    pil = np.asarray(im.merge_into(L, ab, "pil")).astype(int)
    reference = np.asarray(im.from_rgb_tensor(expected, "pil")).astype(int)
    assert pil.shape == (61, 83, 3) and np.abs(pil - reference).max() <= 1
    assert (pil != reference).mean() < 1e-3  # a rounding tie here and there at most


def test_merge_keeps_the_input_luminance(small_tiles):
    L = im.luminance_of(_photo())
    merged = im.merge_into(L, torch.full((1, 2, 8, 8), 40.0), "pt")
    torch.testing.assert_close(split_luminance(merged[None])[0], L, rtol=0, atol=2e-3)


def test_gray_pil_is_the_gray_with_the_input_luminance(small_tiles):
    u8 = _photo()
    gray = np.asarray(im.gray_pil(u8))
    rgb = torch.from_numpy(u8.astype(np.float32) / 255).permute(2, 0, 1)
    expected = np.asarray(im.from_rgb_tensor(gray_from_luminance(split_luminance(rgb[None])[0])[0], "pil"))
    assert gray.shape == (61, 83, 3)
    assert np.abs(gray.astype(int) - expected.astype(int)).max() <= 1


def test_bad_output_type_is_refused():
    with pytest.raises(ValueError, match="output_type"):
        im.merge_into(torch.zeros(1, 1, 8, 8), torch.zeros(1, 2, 4, 4), "jpeg")
