"""Converting user images to and from the pipelines' tensors, and choosing the model's working size."""

from __future__ import annotations

import math

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

ImageInput = PIL.Image.Image | np.ndarray | torch.Tensor


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
