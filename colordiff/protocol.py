"""The evaluation protocol: which prediction pairs with which ground truth, and how both are brought to the
evaluation size before any metric.

Pairing: files pair by relative path without the extension (gt/sub/x.JPEG <-> pred/sub/x.png); unequal or ambiguous
sets are a UsageError naming them. With N samples per image (x_0 ... x_{N-1}), their per-pixel mean is scored: a/b
averaged, L kept (mean_of_samples). Protocol (default 256 px, center crop): `center` scales the shorter side to `size`
and cuts the central square (torchvision's Resize + CenterCrop arithmetic), `stretch` resizes to size x size ignoring
the aspect ratio (DDColor's data loader). An image that already has that size is used untouched; `size: 0` evaluates
at the native size. Metrics are computed on 8-bit RGB (alpha is ignored).

`resample` names the resize filter of both crops (and of `on_size_mismatch: resize`): `bicubic` (default),
`bilinear` or `lanczos` are PIL's (antialiased when shrinking); `cv2` is DDColor's exact resize (its
basicsr/data/lab_dataset.py): the 8-bit image as float32 x / 255, `cv2.resize(img, (w, h))` with the default
INTER_LINEAR (no antialiasing), and the float32 result back to the nearest 8-bit level, rint(y * 255) rounding half
to even, clipped to 0-255: what DDColor's tensor2img does before its validation PSNR and colorfulness (only its
in-training FID takes the float images; our metrics are all on uint8). OpenCV is imported only when `cv2` is used.

`crop_border` (default 0; negative, or leaving no pixel, is a ConfigError / UsageError) is not a resize step: the
scorer (colordiff/evaluate.py) cuts that many pixels from each of the four borders before PSNR and SSIM only, as
BasicSR's calculate_psnr / calculate_ssim(crop_border=...) (DDColor's train_ddcolor.yml has 4, in its commented-out
psnr metric); colorfulness, ΔCF, LPIPS and FID see the whole image.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from colordiff.config import check_settings, setting
from colordiff.errors import UsageError
from colordiff.io import ImageReadError, is_image_path, read_image

_PIL_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
                 "lanczos": Image.Resampling.LANCZOS}
RESAMPLE_NAMES = (*_PIL_RESAMPLE, "cv2")


@dataclass
class Protocol:
    """How images are brought to the evaluation size (see the module docstring)."""

    # evaluation side in pixels; 0 = native size (pred and gt must then have equal sizes)
    size: int = setting(256, min=0, rule="must be 0 (native) or a positive size")
    crop: str = setting("center", choices=("center", "stretch"), rule="must be center or stretch")
    # bicubic | bilinear | lanczos (PIL, antialiased when shrinking) | cv2 (DDColor's)
    resample: str = setting("bicubic", choices=RESAMPLE_NAMES)
    # pixels cut from each border before PSNR and SSIM (BasicSR's crop_border)
    crop_border: int = setting(0, min=0, rule="must be 0 or more pixels")

    def config_checks(self):
        if self.size > 0 and 2 * self.crop_border >= self.size:
            yield "crop_border", (f"{self.crop_border} leaves nothing of a {self.size} px image "
                                  "(it is cut from each border)")


def resize(rgb: np.ndarray, width: int, height: int, resample: str) -> np.ndarray:
    """uint8 (H, W, 3) -> uint8 (height, width, 3) with the protocol's filter `resample` (RESAMPLE_NAMES)."""
    if resample == "cv2":
        import cv2  # only here: `import colordiff.protocol` stays light

        x = rgb.astype(np.float32) / 255.0  # DDColor's imfrombytes(float32=True)
        y = cv2.resize(x, (width, height), interpolation=cv2.INTER_LINEAR)  # cv2's default, as DDColor calls it
        return np.clip(np.rint(y * 255.0), 0, 255).astype(np.uint8)  # float32 throughout, then the nearest level
    return np.asarray(Image.fromarray(rgb).resize((width, height), _PIL_RESAMPLE[resample]))


def apply_protocol(rgb: np.ndarray, protocol: Protocol) -> np.ndarray:
    """Bring uint8 (H, W, 3) to the protocol's size x size (returned untouched when it already has that size)."""
    check_protocol(protocol)
    size, (h, w) = protocol.size, rgb.shape[:2]
    if size == 0 or (h, w) == (size, size):
        return rgb
    if protocol.crop == "stretch":
        return resize(rgb, size, size, protocol.resample)
    # torchvision Resize(size): shorter side -> size, longer side int(size * long / short); CenterCrop: round offsets
    if h <= w:
        new_h, new_w = size, int(size * w / h)
    else:
        new_h, new_w = int(size * h / w), size
    if (new_h, new_w) != (h, w):
        rgb = resize(rgb, new_w, new_h, protocol.resample)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    return rgb[top : top + size, left : left + size]  # (size, size, 3)


def check_protocol(protocol: Protocol) -> None:
    """A ConfigError naming the first bad value (`protocol.size must be ...`): the checks load_config runs on every
    settings file, here for a Protocol built in code."""
    check_settings(protocol, "protocol.")


def read_uint8(path: Path) -> np.ndarray:
    """Any supported image file as 8-bit RGB (H, W, 3); read_image's float32 x/255 rounds back exactly for 8-bit."""
    return np.rint(read_image(path).rgb * 255).astype(np.uint8)


def image_index(root: Path) -> dict[str, Path]:
    """{relative path without suffix: file} for the image files under root (recursive, hidden files skipped)."""
    index, clashes = {}, []
    for file in sorted(root.rglob("*")):
        relative = file.relative_to(root)
        if not file.is_file() or not is_image_path(file) or any(p.startswith(".") for p in relative.parts):
            continue
        key = relative.with_suffix("").as_posix()
        if key in index:
            clashes.append(f"{index[key].name} / {file.name}")
        index[key] = file
    if clashes:
        raise UsageError(f"{root}: several images share a name up to the extension, so pairing is ambiguous: "
                         f"{examples(clashes)}")
    return index


def pair_folders(pred_dir: str | os.PathLike, gt_dir: str | os.PathLike, samples: int = 1
                 ) -> list[tuple[str, Path | tuple[Path, ...], Path]]:
    """[(key, pred file, gt file)] paired by relative path, extension-insensitive; mismatches are a UsageError.

    samples N > 1: each ground truth x pairs with the N predictions x_0 ... x_{N-1} (`colordiff colorize
    --num-samples N`'s names) as a tuple of files, scored as their mean (mean_of_samples); further sample indices
    (x_N, ...) are left unused."""
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    for name, folder in (("pred", pred_dir), ("gt", gt_dir)):
        if not folder.is_dir():
            raise UsageError(f"{folder}: {name} folder not found")
    preds, gts = image_index(pred_dir), image_index(gt_dir)
    if not gts:
        raise UsageError(f"{gt_dir}: no image files")
    wanted = {k: [f"{k}_{i}" for i in range(samples)] if samples > 1 else [k] for k in gts}
    used = {s for names in wanted.values() for s in names}

    def spare(k: str) -> bool:  # a further sample x_j of a photo that has a ground truth
        stem, _, index = k.rpartition("_")
        return samples > 1 and stem in gts and index.isdigit()

    no_pred = [str(gts[k]) for k, names in wanted.items() if any(n not in preds for n in names)]
    no_gt = [str(preds[k]) for k in preds if k not in used and not spare(k)]
    if no_pred or no_gt:
        what = "predictions" if samples == 1 else f"predictions (as {samples} samples each: x_0 ... x_{samples - 1})"
        parts = [f"{len(preds)} {what} vs {len(gts)} ground truths"]
        if no_pred:
            parts.append(f"{len(no_pred)} ground truths have no prediction ({examples(no_pred)})")
        if no_gt:
            parts.append(f"{len(no_gt)} predictions have no ground truth ({examples(no_gt)})")
        raise UsageError("pred and gt do not pair up: " + "; ".join(parts))
    if samples > 1:
        return [(k, tuple(preds[n] for n in wanted[k]), gts[k]) for k in gts]
    return [(k, preds[k], gts[k]) for k in gts]


def mean_of_samples(samples: list[np.ndarray]) -> np.ndarray:
    """The per-pixel mean of N colorizations of one image: their Lab a/b averaged, the first one's L kept (every
    sample keeps the input's L), back to 8-bit sRGB (chroma reduced at constant L and hue where the mean leaves the
    gamut). samples: uint8 (H, W, 3) arrays of one size -> uint8 (H, W, 3)."""
    import torch

    from colordiff.color import merge_luminance, split_luminance

    rgb = torch.from_numpy(np.stack(samples)).permute(0, 3, 1, 2).double() / 255  # (N, 3, H, W)
    L, ab = split_luminance(rgb)
    mean = merge_luminance(L[:1], ab.mean(0, keepdim=True))[0]  # (3, H, W)
    return np.rint(mean.permute(1, 2, 0).numpy() * 255).astype(np.uint8)


def examples(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (f", ... and {len(items) - n} more" if len(items) > n else "")


def load_pair(pred: Path | tuple[Path, ...], gt: Path, protocol: Protocol, on_size_mismatch: str = "error"
              ) -> tuple[np.ndarray, np.ndarray]:
    """Read a pair and apply the protocol; raises ImageReadError (naming the file) for unusable input. A tuple of
    predictions (N samples of one image) is read as their mean (mean_of_samples), at the ground truth's size."""
    g = read_uint8(gt)
    preds = []
    for path in (pred if isinstance(pred, tuple) else (pred,)):
        p = read_uint8(path)
        if p.shape != g.shape:
            if on_size_mismatch != "resize":
                raise ImageReadError(path, f"{p.shape[1]} x {p.shape[0]} but its ground truth {gt} is {g.shape[1]} x "
                                           f"{g.shape[0]} (on_size_mismatch=resize resizes predictions)")
            p = resize(p, g.shape[1], g.shape[0], protocol.resample)
        preds.append(p)
    p = mean_of_samples(preds) if len(preds) > 1 else preds[0]
    return apply_protocol(p, protocol), apply_protocol(g, protocol)
