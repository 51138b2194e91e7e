"""What every prior generator shares: image conversion, batching, device/dtype, and where its weights come from."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import PIL.Image
import torch

from colordiff.images import ImageInput, gray_pil, to_rgb_tensor


class PriorGeneratorError(ValueError):
    """A prior generator that cannot be built or loaded; the message names it, its source and the reason."""


def to_pil(image: ImageInput) -> PIL.Image.Image:
    """Any pipeline image input -> an 8-bit RGB PIL image (what the transformers processors expect)."""
    if isinstance(image, PIL.Image.Image):
        return image.convert("RGB")
    rgb = to_rgb_tensor(image).permute(1, 2, 0).numpy()  # (H, W, 3) in [0, 1]
    return PIL.Image.fromarray(np.round(rgb * 255.0).astype(np.uint8))


def grayscale(images: Sequence[ImageInput]) -> list[PIL.Image.Image]:
    """The grayscale version the priors are computed on: sRGB gray with each image's Lab L, as the U-Net sees it."""
    return [gray_pil(image) for image in images]


def resolve_source(source: str, base_dir: str | Path | None = None) -> str:
    """A local folder (relative ones first against `base_dir`, the folder of the file that names them) or a hub id.

    Something written as a path ("/x", "./x", "../x", "~/x", or with more than one "/") that does not exist is an
    error here rather than a confusing hub lookup later.
    """
    path = Path(source).expanduser()
    if base_dir is not None and not path.is_absolute() and (Path(base_dir) / path).is_dir():
        return str(Path(base_dir) / path)
    if path.is_dir():
        return str(path)
    if source.startswith(("/", "./", "../", "~")) or source.count("/") != 1 or path.exists():
        raise FileNotFoundError(f"folder {source} not found" + (f" (nor under {base_dir})" if base_dir else ""))
    return source


def hub_kwargs(revision: str | None, local_files_only: bool) -> dict:
    kwargs = {"local_files_only": local_files_only}
    if revision is not None:
        kwargs["revision"] = revision
    return kwargs


class PriorGenerator:
    """One pretrained model run on batches of images. Subclasses set `kind` and implement `_run(pil_images)`.

    Calling it takes a list of images (PIL, arrays or tensors, any sizes) and returns one result per image, computed
    `batch_size` images per forward pass; results do not depend on how the list is batched.
    """

    kind: ClassVar[str]  # "captioner" | "classifier" | "segmenter"

    def __init__(self, model: torch.nn.Module, batch_size: int = 8):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model.eval().requires_grad_(False)
        self.batch_size = batch_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to(self, device=None, dtype=None) -> PriorGenerator:
        self.model.to(device=device, dtype=dtype)
        return self

    @torch.no_grad()
    def __call__(self, images: Sequence[ImageInput]) -> list:
        pil = [to_pil(image) for image in images]
        results = []
        for start in range(0, len(pil), self.batch_size):
            results.extend(self._run(pil[start : start + self.batch_size]))
        return results

    def _run(self, images: list[PIL.Image.Image]) -> list:
        raise NotImplementedError
