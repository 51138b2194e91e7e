"""Converting user images to and from the pipelines' tensors, and choosing the model's working size.

Only the exact luminance and the final merge touch full resolution; both run in row tiles (TILE_PIXELS at a time),
so a colorization holds at full size just the input's L (float32, 4 bytes per pixel) and the output (1 byte per
channel for "pil", else float32), whatever the image size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from colordiff.color import (
    gray_from_luminance,
    lab_to_rgb_in_gamut,
    merge_luminance,
    rgb_to_luminance,
    split_luminance,
)

TILE_PIXELS = 1 << 19  # full-resolution pixels converted at once: bounds the temporaries at a few tens of MB


@dataclass(frozen=True)
class Luminance:
    """An input given by its exact Lab L alone, (1, 1, H, W) float32: what colorization keeps of a photo (it is
    reduced to gray anyway), at a third of the memory of float RGB. Make one with luminance_of."""

    L: torch.Tensor  # (1, 1, H, W)

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W)."""
        return tuple(self.L.shape[-2:])


ImageInput = PIL.Image.Image | np.ndarray | torch.Tensor | Luminance


def to_rgb_tensor(image: ImageInput) -> torch.Tensor:
    """A PIL image, an (H, W, 3|1) or (H, W) array (uint8, uint16 or float in [0,1]) or a (3|1, H, W) tensor in [0,1]
    -> float32 (3, H, W) in [0, 1]."""
    if isinstance(image, PIL.Image.Image):
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = image[..., None]
        if image.dtype == np.uint8:
            array = image.astype(np.float32) / 255.0
        elif image.dtype == np.uint16:
            array = image.astype(np.float32) / 65535.0
        else:
            array = image.astype(np.float32)
        tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)  # (C, H, W)
    elif isinstance(image, torch.Tensor):
        tensor = image.detach().to(torch.float32)
        if tensor.ndim == 2:
            tensor = tensor[None]
    else:
        raise TypeError(f"unsupported image type {type(image).__name__}; pass PIL images, arrays or tensors")
    if tensor.ndim != 3 or tensor.shape[0] not in (1, 3):
        raise ValueError(f"expected an image of shape (3, H, W) or (H, W, 3), got {tuple(tensor.shape)}")
    if tensor.shape[0] == 1:
        tensor = tensor.expand(3, -1, -1)
    return tensor.clamp(0.0, 1.0)


def _row_tiles(height: int, width: int):
    """Row ranges [top, bottom) covering the image, about TILE_PIXELS each."""
    rows = max(1, TILE_PIXELS // max(1, width))
    return [(top, min(height, top + rows)) for top in range(0, height, rows)]


def luminance_of(image: ImageInput, device: torch.device | str = "cpu") -> torch.Tensor:
    """The exact Lab L (1, 1, H, W) float32 of any pipeline image input, on `device`, converted in row tiles: no
    full-size float RGB copy is made of an array input (uint8, uint16 or float in [0, 1], (H, W[, 1|3]))."""
    if isinstance(image, Luminance):
        return image.L.to(device=device, dtype=torch.float32)
    if isinstance(image, PIL.Image.Image):
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, torch.Tensor):
        rgb = to_rgb_tensor(image).to(device)[None]  # (1, 3, H, W): a tensor is already float
        return rgb_to_luminance(rgb)
    if not isinstance(image, np.ndarray):
        raise TypeError(f"unsupported image type {type(image).__name__}; pass PIL images, arrays or tensors")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] not in (1, 3)):
        raise ValueError(f"expected an image of shape (H, W, 3) or (H, W), got {tuple(image.shape)}")
    height, width = image.shape[:2]
    L = torch.empty((1, 1, height, width), dtype=torch.float32, device=device)
    for top, bottom in _row_tiles(height, width):
        tile = to_rgb_tensor(image[top:bottom]).to(device)[None]  # (1, 3, rows, W)
        L[..., top:bottom, :] = rgb_to_luminance(tile)
    return L


def working_gray(L: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The model's input for luminance L (1, 1, H, W): the sRGB gray with that L, resized to `size`, (1, 3, h, w).

    The gray is one channel at full size (converted in row tiles) and is resized before being repeated: the three
    channels are equal, and so is each resized one."""
    height, width = L.shape[-2:]
    if (height, width) == tuple(size):
        return gray_from_luminance(L)
    gray = torch.empty_like(L)  # (1, 1, H, W)
    for top, bottom in _row_tiles(height, width):
        gray[..., top:bottom, :] = gray_from_luminance(L[..., top:bottom, :])[:, :1]
    return resize(gray, size).expand(-1, 3, -1, -1)  # (1, 3, h, w)


def _linear_weights(out_size: int, in_size: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bilinear sampling (align_corners=False, as F.interpolate) of in_size samples at out_size points: the lower
    index, the upper index and the upper weight of each output point."""
    src = ((torch.arange(out_size, device=device, dtype=torch.float32) + 0.5) * (in_size / out_size) - 0.5).clamp_min(0)
    lower = src.floor().long().clamp_max(in_size - 1)
    return lower, (lower + 1).clamp_max(in_size - 1), src - lower


def merge_into(L: torch.Tensor, ab: torch.Tensor, output_type: str):
    """The keep-luminance output (docs/colorize.md, "What `colorize` does"): merge_luminance(L, ab) for one image,
    L (1, 1, H, W) with the model's chroma ab (1, 2, h, w), computed in row tiles straight into the output ("pil",
    "np" or "pt").

    Chroma is enlarged bilinearly (width first, once; then each tile's rows), the gamut fit and the conversion run
    per tile, and each tile goes to the CPU as soon as it is done: the full-size buffers are L and the output."""
    if output_type not in ("np", "pil", "pt"):
        raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}")
    height, width = L.shape[-2:]
    h, w = ab.shape[-2:]
    if h > height or w > width:  # the model's grid is finer than the image: small, no tiling needed
        return from_rgb_tensor(merge_luminance(L, ab)[0], output_type)
    ab = ab.to(device=L.device, dtype=torch.float32)
    lo, hi, weight = _linear_weights(width, w, L.device)
    ab_rows = ab[..., lo] * (1 - weight) + ab[..., hi] * weight  # (1, 2, h, W): widened once
    lo, hi, weight = _linear_weights(height, h, L.device)
    as_bytes = output_type == "pil"
    out = (torch.empty((height, width, 3), dtype=torch.uint8 if as_bytes else torch.float32)
           if output_type != "pt" else torch.empty((3, height, width), dtype=torch.float32))
    for top, bottom in _row_tiles(height, width):
        down = weight[top:bottom, None]  # (rows, 1)
        ab_tile = ab_rows[..., lo[top:bottom], :] * (1 - down) + ab_rows[..., hi[top:bottom], :] * down  # (1,2,r,W)
        L_tile = L[..., top:bottom, :]
        rgb = lab_to_rgb_in_gamut(L_tile, ab_tile)[0]  # (3, rows, W)
        if output_type == "pt":
            out[:, top:bottom] = rgb.cpu()
        elif as_bytes:  # rounded as from_rgb_tensor rounds
            out[top:bottom] = (rgb * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu()
        else:
            out[top:bottom] = rgb.permute(1, 2, 0).cpu()
    if output_type == "pt":
        return out
    return PIL.Image.fromarray(out.numpy()) if as_bytes else out.numpy()


def finish_image(L: torch.Tensor, decoded: torch.Tensor, keep_luminance: bool, output_type: str):
    """One output at its input's size from the decoder's RGB (3, h, w): the input's exact L under the decoded a/b
    (keep_luminance), or the decoded RGB itself resized."""
    if keep_luminance:
        return merge_into(L, split_luminance(decoded[None])[1], output_type)
    return from_rgb_tensor(resize(decoded[None], tuple(L.shape[-2:]))[0], output_type)


def gray_pil(image: ImageInput) -> PIL.Image.Image:
    """The 8-bit RGB PIL image of the gray with an input's Lab L (what the prior generators see), in row tiles."""
    L = luminance_of(image)  # (1, 1, H, W)
    height, width = L.shape[-2:]
    gray = np.empty((height, width), dtype=np.uint8)
    for top, bottom in _row_tiles(height, width):
        level = gray_from_luminance(L[..., top:bottom, :])[0, 0].clamp(0.0, 1.0)  # (rows, W)
        gray[top:bottom] = (level * 255.0).round().to(torch.uint8).numpy()
    return PIL.Image.fromarray(gray).convert("RGB")


def from_rgb_tensor(rgb: torch.Tensor, output_type: str):
    """float (3, H, W) in [0, 1] -> PIL ("pil"), float32 (H, W, 3) array ("np") or the tensor on the CPU ("pt")."""
    rgb = rgb.detach().float().clamp(0.0, 1.0).cpu()
    if output_type == "pt":
        return rgb
    array = rgb.permute(1, 2, 0).numpy()  # (H, W, 3)
    if output_type == "np":
        return array
    if output_type == "pil":
        return PIL.Image.fromarray(np.round(array * 255.0).astype(np.uint8))
    raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}")


def working_size(height: int, width: int, resolution: int, multiple: int) -> tuple[int, int]:
    """The model's (h, w) for an input: aspect ratio kept, area about resolution^2, sides multiples of `multiple`."""
    scale = resolution / math.sqrt(height * width)
    h = max(multiple, round(height * scale / multiple) * multiple)
    w = max(multiple, round(width * scale / multiple) * multiple)
    return h, w


def resize(images: torch.Tensor, size: tuple[int, int], mode: str = "bicubic") -> torch.Tensor:
    """Resize (B, C, H, W) to `size`, antialiased when shrinking; a no-op at the same size."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    shrinking = size[0] < images.shape[-2] or size[1] < images.shape[-1]
    align = False if mode in ("bilinear", "bicubic") else None
    return F.interpolate(images, size=size, mode=mode, align_corners=align, antialias=shrinking and mode != "nearest")
