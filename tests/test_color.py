"""Tests for colordiff.color: agreement with skimage, round trips, and luminance-exact merging."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from skimage.color import lab2rgb, rgb2lab

from colordiff.color import (
    fit_chroma_to_gamut,
    gray_from_luminance,
    lab_to_rgb,
    lab_to_rgb_in_gamut,
    merge_luminance,
    rgb_to_gray,
    rgb_to_lab,
    split_luminance,
)

PHOTOS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "photos"
if not PHOTOS.is_dir():
    PHOTOS = Path("/work/shared/data/photos")
PHOTO_FILES = ["kodak/kodim03.png", "kodak/kodim23.png", "public-domain/darknet_horses.jpg"]


def load_photo(name: str, size: int = 128) -> np.ndarray:
    """Load a real photo downscaled so its long side is `size`, as float64 (H, W, 3) in [0, 1]."""
    with Image.open(PHOTOS / name) as img:
        img = img.convert("RGB")
        img.thumbnail((size, size), Image.Resampling.BICUBIC)
        return np.asarray(img, dtype=np.float64) / 255


def to_chw(x: np.ndarray, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(H, W, C) numpy -> (C, H, W) torch."""
    return torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1).to(dtype)


def to_hwc(x: torch.Tensor) -> np.ndarray:
    """(C, H, W) torch -> (H, W, C) float64 numpy."""
    return x.detach().permute(1, 2, 0).double().numpy()


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    return [load_photo(name) for name in PHOTO_FILES]


# -----------------------------------------------------------------------------
# agreement with skimage


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_rgb_to_lab_matches_skimage_on_photos(photos, dtype):
    for photo in photos:
        lab = rgb_to_lab(to_chw(photo, dtype))
        assert lab.dtype == dtype
        assert np.abs(to_hwc(lab) - rgb2lab(photo)).max() < 0.05


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_rgb_to_lab_matches_skimage_on_random_images(dtype):
    rng = np.random.default_rng(0)
    rgb = rng.random((40, 50, 3))
    rgb[0, :4] = [[0, 0, 0], [1, 1, 1], [0.04, 0.04045, 0.05], [1, 0, 0]]  # black, white, sRGB knee, pure red
    lab = rgb_to_lab(to_chw(rgb, dtype))
    tol = 1e-9 if dtype == torch.float64 else 0.05
    assert np.abs(to_hwc(lab) - rgb2lab(rgb)).max() < tol


def test_lab_to_rgb_matches_skimage(photos):
    rng = np.random.default_rng(1)
    for rgb in [*photos, rng.random((30, 20, 3))]:
        lab = rgb2lab(rgb)  # in-gamut Lab, where skimage's clipping does nothing
        assert np.abs(to_hwc(lab_to_rgb(to_chw(lab))) - lab2rgb(lab)).max() < 1e-6
        assert np.abs(to_hwc(lab_to_rgb(to_chw(lab, torch.float32))) - lab2rgb(lab)).max() < 1e-4


def test_round_trip(photos):
    rng = np.random.default_rng(2)
    for rgb in [*photos, rng.random((33, 17, 3))]:
        x = to_chw(rgb, torch.float32)
        back = lab_to_rgb(rgb_to_lab(x))
        assert back.dtype == torch.float32
        assert (back - x).abs().max() < 1e-3


def test_lab_to_rgb_unclipped_by_default():
    lab = torch.tensor([50.0, 120.0, -120.0]).view(3, 1, 1)  # far outside sRGB
    rgb = lab_to_rgb(lab)
    assert rgb.min() < -0.01 or rgb.max() > 1.01
    clipped = lab_to_rgb(lab, clip=True)
    assert clipped.min() >= 0 and clipped.max() <= 1
    assert torch.equal(clipped, rgb.clamp(0, 1))


def test_batched_equals_per_image(photos):
    crops = torch.stack([to_chw(p[:64, :64], torch.float32) for p in photos])  # (B, 3, 64, 64)
    lab = rgb_to_lab(crops)
    for i in range(len(photos)):
        torch.testing.assert_close(lab[i], rgb_to_lab(crops[i]), rtol=0, atol=1e-5)
    nested = lab.view(1, len(photos), 3, 64, 64)  # any number of leading dims
    torch.testing.assert_close(lab_to_rgb(nested)[0], lab_to_rgb(lab), rtol=0, atol=0)


def test_low_precision_inputs_are_upcast():
    rgb = torch.rand(3, 16, 16)
    for dtype in (torch.float16, torch.bfloat16):
        lab = rgb_to_lab(rgb.to(dtype))
        assert lab.dtype == dtype
        # the only error left is the rounding of input and output to dtype, not float16 arithmetic
        ref = rgb_to_lab(rgb.to(dtype).float())
        torch.testing.assert_close(lab.float(), ref.to(dtype).float(), rtol=0, atol=0)


def test_rejects_bad_shapes_and_integer_input():
    with pytest.raises(ValueError, match="3, H, W"):
        rgb_to_lab(torch.rand(4, 16, 16))
    with pytest.raises(ValueError, match="1, H, W"):
        gray_from_luminance(torch.rand(3, 16, 16))
    with pytest.raises(TypeError):
        rgb_to_lab(torch.zeros(3, 4, 4, dtype=torch.uint8))


# -----------------------------------------------------------------------------
# gray and luminance


def test_gray_from_luminance_keeps_L_and_has_no_chroma():
    L = torch.linspace(0, 100, 101, dtype=torch.float64).view(1, 1, 1, 101)  # (1, 1, 1, 101)
    gray = gray_from_luminance(L)
    assert gray.shape == (1, 3, 1, 101)
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 1], gray[:, 2])  # R = G = B
    assert gray.min() >= 0 and gray.max() <= 1
    lab = rgb_to_lab(gray)
    # skimage's rounded constants (7.787, 0.008856, 0.2068966) make f and its inverse disagree by ~4e-5 in L near
    # L = 8; everywhere else the luminance is exact
    assert (lab[:, :1] - L).abs().max() < 1e-4
    assert (lab[:, :1] - L)[..., 10:].abs().max() < 1e-9
    # skimage's matrix rows miss its D65 white by ~1e-4, so sRGB gray has |a|, |b| < 0.005 rather than exactly 0
    assert lab[:, 1:].abs().max() < 0.01
    np.testing.assert_allclose(to_hwc(lab[0]), rgb2lab(to_hwc(gray[0])), atol=1e-9)


def test_rgb_to_gray_and_split_luminance(photos):
    x = to_chw(photos[0], torch.float32)
    L, ab = split_luminance(x)
    assert L.shape == (1, *x.shape[1:]) and ab.shape == (2, *x.shape[1:])
    torch.testing.assert_close(torch.cat([L, ab]), rgb_to_lab(x), rtol=0, atol=0)
    gray = rgb_to_gray(x)
    assert gray.shape == x.shape and torch.equal(gray[0], gray[2])
    torch.testing.assert_close(rgb_to_lab(gray)[:1], L, rtol=0, atol=1e-3)
    # gray has the photo's luminance, not the plain channel mean
    assert (gray[0] - x.mean(0)).abs().max() > 0.05


# -----------------------------------------------------------------------------
# gamut fitting and merging


def test_fit_chroma_keeps_in_gamut_pixels_exactly(photos):
    for photo in photos:
        L, ab = split_luminance(to_chw(photo, torch.float32))
        assert torch.equal(fit_chroma_to_gamut(L, ab), ab)


def test_fit_chroma_reduces_out_of_gamut_pixels_only():
    L = torch.tensor([50.0, 50.0, 90.0]).view(1, 1, 3)  # (1, 1, 3)
    ab = torch.tensor([[10.0, 100.0, -80.0], [10.0, 0.0, 80.0]]).view(2, 1, 3)  # one in gamut, two far out
    fitted = fit_chroma_to_gamut(L, ab)
    assert torch.equal(fitted[:, :, 0], ab[:, :, 0])
    k = fitted[:, :, 1:].norm(dim=0) / ab[:, :, 1:].norm(dim=0)  # chroma scale of the two far-out pixels
    assert (k < 0.99).all() and (k > 0.05).all()
    torch.testing.assert_close(fitted[:, :, 1:], k * ab[:, :, 1:], rtol=1e-6, atol=0)  # same hue: one k for a and b
    rgb = lab_to_rgb(torch.cat([L, fitted]))
    assert rgb.min() > -1e-5 and rgb.max() < 1 + 1e-5
    # k is maximal: 1% more chroma leaves the gamut
    over = lab_to_rgb(torch.cat([L, fitted * 1.01]))[:, :, 1:]
    assert ((over < 0) | (over > 1)).any(dim=0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_converting_once_equals_fitting_then_converting(dtype):
    """lab_to_rgb_in_gamut converts the image once and only the out-of-gamut pixels again: the gamut fit followed
    by a conversion of the whole image, to the last bit in float64 and to one float32 ulp (a strip of pixels may
    take another vector path through the power functions)."""
    g = torch.Generator().manual_seed(3)
    L = torch.rand(2, 1, 40, 50, generator=g, dtype=dtype) * 100  # (2, 1, 40, 50)
    ab = torch.randn(2, 2, 40, 50, generator=g, dtype=dtype) * 40
    expected = lab_to_rgb(torch.cat([L, fit_chroma_to_gamut(L, ab)], dim=1)).clamp(0, 1)
    outside = ((lab_to_rgb(torch.cat([L, ab], dim=1)) < 0) | (lab_to_rgb(torch.cat([L, ab], dim=1)) > 1)).any(1)
    assert 0.2 < outside.float().mean() < 0.9  # both kinds of pixels are there
    got = lab_to_rgb_in_gamut(L, ab)
    assert got.dtype == dtype
    torch.testing.assert_close(got, expected, rtol=0, atol=0 if dtype == torch.float64 else 1.2e-7)


def test_fit_chroma_float16():
    L = torch.tensor([30.0, 60.0, 75.0], dtype=torch.float16).view(1, 1, 3)
    ab = torch.tensor([[5.0, 127.0, -100.0], [-5.0, 127.0, 0.0]], dtype=torch.float16).view(2, 1, 3)
    fitted = fit_chroma_to_gamut(L, ab)
    assert fitted.dtype == torch.float16
    assert torch.equal(fitted[:, :, 0], ab[:, :, 0])  # in gamut: untouched
    assert (fitted[:, :, 1:].abs() < ab[:, :, 1:].abs()).any(dim=0).all()
    rgb = lab_to_rgb(torch.cat([L, fitted]).float())
    assert rgb.min() > -2e-3 and rgb.max() < 1 + 2e-3  # float16 rounding of the result


def test_merge_luminance_reproduces_in_gamut_photo(photos):
    for photo in photos:
        x = to_chw(photo, torch.float32)[None]  # (1, 3, H, W)
        L, ab = split_luminance(x)
        out = merge_luminance(L, ab)
        assert out.shape == x.shape and out.dtype == torch.float32
        assert (out - x).abs().max() < 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_merge_luminance_keeps_L_for_out_of_gamut_chroma(dtype):
    g = torch.Generator().manual_seed(0)
    L = torch.rand(3, 1, 48, 48, generator=g) * 100
    L[:, :, 0, :6] = torch.tensor([0.0, 0.01, 1.0, 50.0, 99.9, 100.0])  # include the extremes
    ab = torch.empty(3, 2, 48, 48)
    ab[0] = torch.tensor([120.0, 120.0]).view(2, 1, 1)
    ab[1] = torch.tensor([-120.0, 120.0]).view(2, 1, 1)
    ab[2] = (torch.rand(2, 48, 48, generator=g) * 2 - 1) * 150
    L, ab = L.to(dtype), ab.to(dtype)

    out = merge_luminance(L, ab)
    assert out.dtype == dtype and out.shape == (3, 3, 48, 48)
    assert out.min() >= 0 and out.max() <= 1
    lab = rgb_to_lab(out.double())
    assert (lab[:, :1] - L.double()).abs().max() < 1e-3
    # plain clipping, what merge_luminance avoids, moves L by whole units here
    clipped = rgb_to_lab(lab_to_rgb(torch.cat([L, ab], 1).double(), clip=True))
    assert (clipped[:, :1] - L.double()).abs().max() > 5

    chroma_in = ab.double().norm(dim=1)
    chroma_out = lab[:, 1:].norm(dim=1)
    assert (chroma_out <= chroma_in + 0.01).all()
    assert (chroma_out < chroma_in - 1).float().mean() > 0.5  # most pixels really had to be desaturated
    colored = chroma_out > 1
    hue_in = torch.atan2(ab[:, 1], ab[:, 0]).double()
    hue_out = torch.atan2(lab[:, 2], lab[:, 1])
    dhue = torch.remainder(hue_out - hue_in + torch.pi, 2 * torch.pi) - torch.pi
    assert colored.float().mean() > 0.5
    assert dhue[colored].abs().max() < 0.02


def test_merge_luminance_resizes_chroma(photos):
    x = to_chw(photos[0], torch.float32)[None]  # (1, 3, H, W)
    L, ab = split_luminance(x)
    H, W = L.shape[-2:]
    half = F.interpolate(ab, size=(H // 2, W // 2), mode="bilinear", align_corners=False, antialias=True)
    out = merge_luminance(L, half)
    assert out.shape == x.shape
    torch.testing.assert_close(rgb_to_lab(out)[:, :1], L, rtol=0, atol=1e-3)
    # the chroma is the half-size ab upsampled bilinearly (the photo's ab is in gamut at this L almost everywhere)
    expected = F.interpolate(half, size=(H, W), mode="bilinear", align_corners=False)
    out_ab = rgb_to_lab(out)[:, 1:]
    assert (out_ab - expected).abs().median() < 1e-3
    assert (out_ab - ab).abs().mean() > 0.1  # and genuinely blurrier than the original chroma

    # downsampling is antialiased (plain bilinear would alias this noisy chroma and give a different image)
    big = (torch.rand(1, 2, 2 * H + 1, 2 * W + 3, generator=torch.Generator().manual_seed(0)) - 0.5) * 40
    shrunk = F.interpolate(big, size=(H, W), mode="bilinear", align_corners=False, antialias=True)
    aliased = F.interpolate(big, size=(H, W), mode="bilinear", align_corners=False)
    torch.testing.assert_close(merge_luminance(L, big), merge_luminance(L, shrunk), rtol=0, atol=1e-6)
    assert (merge_luminance(L, big) - merge_luminance(L, aliased)).abs().max() > 0.01

    with pytest.raises(ValueError, match="batch"):
        merge_luminance(L, torch.cat([ab, ab]))
