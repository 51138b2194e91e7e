"""
sRGB <-> CIE Lab conversions in pure torch, batched and channel-first, matching skimage.color.rgb2lab / lab2rgb.

Conventions: RGB is float in [0, 1] shaped (..., 3, H, W); Lab is L in [0, 100], a/b roughly [-128, 127], shaped
(..., 3, H, W); luminance alone is (..., 1, H, W) and chroma (a, b) is (..., 2, H, W). The white point is D65 with the
2-degree observer, and every constant is the one skimage uses, so numbers agree with skimage to float rounding.

The colorization model sees a gray image derived from Lab L and predicts ab; merge_luminance puts the exact input L
back under the predicted ab and brings out-of-gamut colors into sRGB by lowering chroma, never by clipping RGB
(clipping would change the luminance the user gave us).
"""

import torch
import torch.nn.functional as F

# skimage's xyz_from_rgb (sRGB primaries, D65); rgb_from_xyz is its exact inverse, as in skimage
_XYZ_FROM_RGB = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
_RGB_FROM_XYZ = tuple(map(tuple, torch.linalg.inv(torch.tensor(_XYZ_FROM_RGB, dtype=torch.float64)).tolist()))
_WHITE = (0.95047, 1.0, 1.08883)  # D65, 2-degree observer (skimage's "D65"/"2")

# CIE f(t) as skimage writes it: cube root above EPSILON, the linear segment 7.787 t + 16/116 below
_EPSILON = 0.008856
_KAPPA = 7.787
_F_THRESHOLD = 0.2068966  # f(EPSILON); skimage's lab2xyz switches branch here
_F_OFFSET = 16.0 / 116.0

# How far outside [0, 1] a converted channel may be and still count as in gamut. It only has to absorb float32
# rounding (real photos round-trip within ~2e-6); any slack survives into merge_luminance's final clamp, and near
# white 1e-5 of green already moves L by ~8e-4, so it must stay this small.
_GAMUT_TOL = 3e-6
# _in_gamut's bounds moved through the inverse of the (increasing) sRGB transfer curve: the gamut fit's bisection
# tests linear RGB and skips a power per step
_LINEAR_LOW = -_GAMUT_TOL / 12.92
_LINEAR_HIGH = ((1.0 + _GAMUT_TOL + 0.055) / 1.055) ** 2.4


# -----------------------------------------------------------------------------
# helpers


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    """Return the dtype to compute in: float64 stays float64, every other float type runs in float32."""
    if not x.is_floating_point():
        raise TypeError(f"expected a floating point tensor, got {x.dtype}")
    # float16/bfloat16 lack the precision for cube roots and 2.4 powers; float32 is plenty for 1e-3 round trips
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check_channels(x: torch.Tensor, channels: int, name: str) -> None:
    """Raise ValueError unless x is shaped (..., channels, H, W)."""
    if x.dim() < 3 or x.shape[-3] != channels:
        raise ValueError(f"{name} must be shaped (..., {channels}, H, W), got {tuple(x.shape)}")


def _mix(matrix: tuple[tuple[float, ...], ...], x: torch.Tensor) -> torch.Tensor:
    """Apply a 3x3 color matrix along the channel dim (-3) of x (..., 3, H, W)."""
    # written as explicit weighted sums rather than a matmul/einsum so a global TF32 setting on GPU (common in
    # diffusion training scripts) can never degrade the conversion to ~1e-3 precision
    c0, c1, c2 = x.unbind(-3)
    rows = [m0 * c0 + m1 * c1 + m2 * c2 for m0, m1, m2 in matrix]
    return torch.stack(rows, dim=-3)  # (..., 3, H, W)


def _srgb_to_linear(c: torch.Tensor) -> torch.Tensor:
    """Undo the sRGB transfer curve (IEC 61966-2-1)."""
    # clamp inside the power branch so values below the threshold (including negatives) never produce NaN
    return torch.where(c > 0.04045, ((c.clamp_min(0.04045) + 0.055) / 1.055) ** 2.4, c / 12.92)


def _linear_to_srgb(c: torch.Tensor) -> torch.Tensor:
    """Apply the sRGB transfer curve; values outside [0, 1] stay outside (no clipping)."""
    return torch.where(c > 0.0031308, 1.055 * c.clamp_min(0.0031308) ** (1 / 2.4) - 0.055, c * 12.92)


def _f(t: torch.Tensor) -> torch.Tensor:
    """CIE Lab companding f(t), with skimage's constants."""
    return torch.where(t > _EPSILON, t.clamp_min(_EPSILON) ** (1 / 3), _KAPPA * t + _F_OFFSET)


def _f_inv(t: torch.Tensor) -> torch.Tensor:
    """Inverse of _f, with skimage's branch threshold."""
    return torch.where(t > _F_THRESHOLD, t**3, (t - _F_OFFSET) / _KAPPA)


def _rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB -> Lab in the dtype of rgb (no casting)."""
    xyz = _mix(_XYZ_FROM_RGB, _srgb_to_linear(rgb))  # (..., 3, H, W)
    fx, fy, fz = (_f(xyz.select(-3, i) / _WHITE[i]) for i in range(3))
    L = 116.0 * fy - 16.0
    a = 500.0 * (fx - fy)
    b = 200.0 * (fy - fz)
    return torch.stack([L, a, b], dim=-3)  # (..., 3, H, W)


def _lab_to_linear(lab: torch.Tensor) -> torch.Tensor:
    """Lab -> unclipped linear RGB in the dtype of lab (no casting)."""
    L, a, b = lab.unbind(-3)
    fy = (L + 16.0) / 116.0
    # unlike skimage we do not clip negative Z: out-of-gamut colors must stay visibly out of gamut
    fxyz = (fy + a / 500.0, fy, fy - b / 200.0)
    xyz = torch.stack([_f_inv(f) * white for f, white in zip(fxyz, _WHITE, strict=True)], dim=-3)  # (..., 3, H, W)
    return _mix(_RGB_FROM_XYZ, xyz)  # (..., 3, H, W)


def _lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Lab -> unclipped sRGB in the dtype of lab (no casting)."""
    return _linear_to_srgb(_lab_to_linear(lab))  # (..., 3, H, W)


def _gray_from_luminance(L: torch.Tensor) -> torch.Tensor:
    """Luminance (..., 1, H, W) -> gray sRGB (..., 3, H, W) in the dtype of L (no casting)."""
    # the Y row of _XYZ_FROM_RGB sums to exactly 1, so R = G = B = encode(Y) has luminance Y
    Y = _f_inv((L + 16.0) / 116.0) * _WHITE[1]
    return _linear_to_srgb(Y).expand(*L.shape[:-3], 3, *L.shape[-2:]).contiguous()  # (..., 3, H, W)


def _in_gamut(rgb: torch.Tensor) -> torch.Tensor:
    """True where all three channels of rgb (..., 3, H, W) lie in [0, 1] up to _GAMUT_TOL; shape (..., 1, H, W)."""
    inside = (rgb >= -_GAMUT_TOL) & (rgb <= 1.0 + _GAMUT_TOL)
    return inside.all(dim=-3, keepdim=True)


# -----------------------------------------------------------------------------
# public API


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """Convert sRGB (..., 3, H, W) in [0, 1] to CIE Lab (..., 3, H, W), like skimage.color.rgb2lab."""
    _check_channels(rgb, 3, "rgb")
    return _rgb_to_lab(rgb.to(_work_dtype(rgb))).to(rgb.dtype)


def lab_to_rgb(lab: torch.Tensor, clip: bool = False) -> torch.Tensor:
    """Convert CIE Lab (..., 3, H, W) to sRGB (..., 3, H, W); values outside [0, 1] mean out of gamut unless clip."""
    _check_channels(lab, 3, "lab")
    rgb = _lab_to_rgb(lab.to(_work_dtype(lab)))
    if clip:
        rgb = rgb.clamp(0.0, 1.0)
    return rgb.to(lab.dtype)


def gray_from_luminance(L: torch.Tensor) -> torch.Tensor:
    """Turn Lab luminance (..., 1, H, W) into the 3-channel sRGB gray (..., 3, H, W) with that L and a = b = 0."""
    _check_channels(L, 1, "L")
    return _gray_from_luminance(L.to(_work_dtype(L))).to(L.dtype)


def rgb_to_gray(rgb: torch.Tensor) -> torch.Tensor:
    """Return the 3-channel gray image (..., 3, H, W) with the same Lab L as rgb: the model's input convention."""
    _check_channels(rgb, 3, "rgb")
    x = rgb.to(_work_dtype(rgb))
    L = _rgb_to_lab(x)[..., :1, :, :]  # (..., 1, H, W)
    return _gray_from_luminance(L).to(rgb.dtype)


def rgb_to_luminance(rgb: torch.Tensor) -> torch.Tensor:
    """Lab L (..., 1, H, W) of sRGB (..., 3, H, W): the L of rgb_to_lab, computed without a and b."""
    _check_channels(rgb, 3, "rgb")
    x = rgb.to(_work_dtype(rgb))
    Y = _mix(_XYZ_FROM_RGB[1:2], _srgb_to_linear(x))  # (..., 1, H, W); the same sums as rgb_to_lab's Y row
    return (116.0 * _f(Y / _WHITE[1]) - 16.0).to(rgb.dtype)


def split_luminance(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split sRGB (..., 3, H, W) into Lab luminance L (..., 1, H, W) and chroma ab (..., 2, H, W)."""
    lab = rgb_to_lab(rgb)
    return lab[..., :1, :, :], lab[..., 1:, :, :]


def fit_chroma_to_gamut(L: torch.Tensor, ab: torch.Tensor, iters: int = 24) -> torch.Tensor:
    """Scale each pixel's ab by the largest k in [0, 1] that keeps Lab (L, k*ab) inside sRGB; L and hue stay fixed."""
    _check_channels(L, 1, "L")
    _check_channels(ab, 2, "ab")
    if L.shape[:-3] != ab.shape[:-3] or L.shape[-2:] != ab.shape[-2:]:
        raise ValueError(f"L {tuple(L.shape)} and ab {tuple(ab.shape)} must agree in all dims but channels")
    dtype = torch.promote_types(_work_dtype(L), _work_dtype(ab))
    ab_w = ab.to(dtype)
    lab = torch.cat([L.to(dtype), ab_w], dim=-3)  # (..., 3, H, W)
    outside = ~_in_gamut(_lab_to_rgb(lab))  # (..., 1, H, W), True where k = 1 does not fit
    if not outside.any():
        return ab  # everything already fits: k = 1 exactly, ab returned untouched
    mask = outside.squeeze(-3)  # (..., H, W)
    strip = lab.movedim(-3, -1)[mask].T.unsqueeze(-1)  # (3, N, 1)
    k = torch.ones(mask.shape, dtype=dtype, device=ab.device)  # (..., H, W)
    k[mask] = _gamut_scale(strip[:1], strip[1:], iters).flatten()
    return (ab_w * k.unsqueeze(-3)).to(ab.dtype)  # (..., 2, H, W)


def _gamut_scale(L: torch.Tensor, ab: torch.Tensor, iters: int) -> torch.Tensor:
    """The largest k in [0, 1] (to 2^-iters) with Lab (L, k*ab) in sRGB, for a strip of out-of-gamut pixels
    L (1, N, 1), ab (2, N, 1) (a (C, H, W) shape, so the converters apply); (1, N, 1). Bisection."""
    # invariant: k = lo is in gamut. k = 0 is gray, in gamut for L in [0, 100] except that skimage's matrix rows miss
    # the D65 white slightly (blue reaches 1.00004 at L = 100); the callers' final clamp absorbs that
    lo = torch.zeros_like(L)
    hi = torch.ones_like(L)  # invariant: k = hi is out of gamut
    # _lab_to_linear's arithmetic, op for op (the same k as bisecting through it), with what does not depend on k
    # (the Y term: L alone) computed once; each step converts X and Z only
    fy = (L + 16.0) / 116.0  # (1, N, 1)
    Y = _f_inv(fy) * _WHITE[1]
    m1Y = [row[1] * Y for row in _RGB_FROM_XYZ]
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        X = _f_inv(fy + (mid * ab[:1]) / 500.0) * _WHITE[0]
        Z = _f_inv(fy - (mid * ab[1:]) / 200.0) * _WHITE[2]
        ok = None
        for (m0, _, m2), m1y in zip(_RGB_FROM_XYZ, m1Y, strict=True):
            channel = m0 * X + m1y + m2 * Z  # (1, N, 1) linear R, G or B
            inside = (channel >= _LINEAR_LOW) & (channel <= _LINEAR_HIGH)
            ok = inside if ok is None else ok & inside
        lo = torch.where(ok, mid, lo)
        hi = torch.where(ok, hi, mid)
    return lo


def lab_to_rgb_in_gamut(L: torch.Tensor, ab: torch.Tensor, iters: int = 24) -> torch.Tensor:
    """sRGB (..., 3, H, W) in [0, 1] of Lab (L, fit_chroma_to_gamut(L, ab)) with L (..., 1, H, W), ab (..., 2, H, W)
    of equal size, in the working dtype: the values of converting the fitted chroma (to one float32 ulp), with the
    conversion run once over the image: only the pixels outside the gamut are bisected and converted again."""
    dtype = torch.promote_types(_work_dtype(L), _work_dtype(ab))
    lab = torch.cat([L.to(dtype), ab.to(dtype)], dim=-3)  # (..., 3, H, W)
    rgb = _lab_to_rgb(lab)  # (..., 3, H, W)
    mask = ~_in_gamut(rgb).squeeze(-3)  # (..., H, W): k = 1 does not fit
    if mask.any():
        strip = lab.movedim(-3, -1)[mask].T.unsqueeze(-1)  # (3, N, 1)
        L_s, ab_s = strip[:1], strip[1:]
        fitted = _lab_to_rgb(torch.cat([L_s, ab_s * _gamut_scale(L_s, ab_s, iters)], dim=0))  # (3, N, 1)
        rgb.movedim(-3, -1)[mask] = fitted[..., 0].T  # (N, 3) written back into place
    # after the gamut fit this clamp only removes float rounding (_GAMUT_TOL, or gray's 4e-5 of blue at L = 100)
    return rgb.clamp(0.0, 1.0)


def merge_luminance(L: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """Combine exact luminance L (B, 1, H, W) with predicted chroma ab (B, 2, h, w) into sRGB (B, 3, H, W) in gamut."""
    _check_channels(L, 1, "L")
    _check_channels(ab, 2, "ab")
    if L.shape[:-3] != ab.shape[:-3]:
        raise ValueError(f"L {tuple(L.shape)} and ab {tuple(ab.shape)} have different batch dims")
    out_dtype = torch.promote_types(L.dtype, ab.dtype)
    dtype = torch.promote_types(_work_dtype(L), _work_dtype(ab))
    L_w, ab_w = L.to(dtype), ab.to(dtype)
    H, W = L.shape[-2:]
    h, w = ab.shape[-2:]
    if (h, w) != (H, W):
        # F.interpolate wants (N, C, h, w): fold any leading dims into N and unfold afterwards
        flat = ab_w.reshape(-1, 2, h, w)
        # antialias only matters when shrinking; when enlarging it equals plain bilinear
        flat = F.interpolate(flat, size=(H, W), mode="bilinear", align_corners=False, antialias=h > H or w > W)
        ab_w = flat.reshape(*ab.shape[:-2], H, W)  # (..., 2, H, W)
    return lab_to_rgb_in_gamut(L_w, ab_w).to(out_dtype)  # (..., 3, H, W)
