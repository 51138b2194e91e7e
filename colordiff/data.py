"""Training data: color photos, their gray versions (from Lab L) and the text condition.

Sources: an ImageNet-style tree (one folder per synset), a flat folder, or a file list. Text: ImageNet class names,
a caption cache (JSONL written by scripts/caption.py) or nothing. Augmentation (resize shorter side, crop, flip) is a
pure function of (seed, epoch, index), so a resumed run sees exactly the crops an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from colordiff.color import rgb_to_gray, rgb_to_lab
from colordiff.io import ImageReadError, is_image_path, read_image

logger = logging.getLogger(__name__)

TEXT_SOURCES = ("classname", "captions", "empty")


@cache
def imagenet_class_names() -> dict[str, str]:
    """WordNet id -> ImageNet-1k class name (the table shipped in colordiff/resources)."""
    table = resources.files("colordiff.resources").joinpath("imagenet_classes.tsv").read_text()
    return dict(line.split("\t") for line in table.splitlines() if line and not line.startswith("#"))


@dataclass(frozen=True)
class Example:
    path: Path
    relative: str  # the key into caption caches (posix path relative to the data root)
    text: str


# -- listing --------------------------------------------------------------------------------------------------------
def list_images(root: str | Path | None, file_list: str | Path | None = None) -> list[tuple[Path, str]]:
    """(path, relative key) of every image: the lines of `file_list` (relative to `root` when given), else every
    image file under `root`, sorted."""
    if file_list is not None:
        base = Path(root) if root else Path(file_list).parent
        lines = [ln.strip() for ln in Path(file_list).read_text().splitlines()]
        return [(base / ln, Path(ln).as_posix()) for ln in lines if ln and not ln.startswith("#")]
    if root is None or not Path(root).is_dir():
        raise FileNotFoundError(f"train_data_dir {root} is not a folder")
    root = Path(root)
    return [(p, p.relative_to(root).as_posix()) for p in sorted(root.rglob("*")) if p.is_file() and is_image_path(p)]


def text_for(relative: str, source: str, captions: dict[str, str] | None) -> str:
    """The text condition of one image: its ImageNet class name (from its synset folder), its cached caption, or ""."""
    if source == "empty":
        return ""
    if source == "classname":
        names = imagenet_class_names()
        wnid = next((part for part in Path(relative).parts[:-1] if part in names), None)
        if wnid is None:
            raise ValueError(f"{relative}: no ImageNet synset folder (nXXXXXXXX) in its path for text_source=classname")
        return names[wnid]
    if source == "captions":
        if relative not in captions:
            raise KeyError(f"{relative}: no caption in the caption cache")
        return captions[relative]
    raise ValueError(f"text_source must be one of {TEXT_SOURCES}, got {source!r}")


def load_captions(path: str | Path, key: str) -> dict[str, str]:
    """A caption cache (JSONL: {"path": relative, key: text, ...} per line) -> {relative: text}."""
    captions = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            captions[record["path"]] = record[key]
        except (json.JSONDecodeError, KeyError) as err:
            raise ValueError(f"{path}:{number}: not a caption record with 'path' and {key!r}: {err}") from None
    return captions


# -- screening ------------------------------------------------------------------------------------------------------
def mean_chroma(rgb: np.ndarray) -> float:
    """Mean Lab chroma sqrt(a^2 + b^2) of an (H, W, 3) image in [0, 1], measured at about 128 px (fast)."""
    image = torch.from_numpy(rgb).permute(2, 0, 1)[None]  # (1, 3, H, W)
    scale = 128 / max(image.shape[-2:])
    if scale < 1:
        image = torch.nn.functional.interpolate(image, scale_factor=scale, mode="area")
    ab = rgb_to_lab(image)[0, 1:]  # (2, h, w)
    return float(ab.square().sum(0).sqrt().mean())


def screen_images(items: list[tuple[Path, str]], min_chroma: float, max_pixels: int, workers: int = 8):
    """Split into (kept, grayscale, unreadable): images whose mean chroma is under `min_chroma` are already gray and
    teach nothing about color; unreadable files are dropped with a warning naming them."""

    def check(item):
        try:
            image = read_image(item[0], max_pixels=max_pixels)  # full decode: catches truncation, bombs, tiny images
            return "gray" if mean_chroma(image.rgb) < min_chroma else "ok"
        except ImageReadError as err:
            return f"unreadable: {err}"

    kept, gray, bad = [], [], []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for item, verdict in zip(items, pool.map(check, items), strict=True):
            if verdict == "ok":
                kept.append(item)
            elif verdict == "gray":
                gray.append(item)
            else:
                logger.warning("skipping %s (%s)", item[0], verdict)
                bad.append(item)
    return kept, gray, bad


# -- augmentation ---------------------------------------------------------------------------------------------------
def augmentation_rng(seed: int, epoch: int, index: int) -> random.Random:
    digest = hashlib.sha256(f"{seed}:{epoch}:{index}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def resize_and_crop(rgb: torch.Tensor, resolution: int, rng: random.Random, center_crop: bool, flip: bool,
                    resize_range: tuple[float, float] = (1.0, 1.0)):
    """Resize the shorter side to `resolution` times a factor drawn from `resize_range` (antialiased), crop a
    square (random or center), maybe flip. The default range (1, 1) draws nothing: the shorter side is `resolution`."""
    _, h, w = rgb.shape
    low, high = resize_range
    factor = 1.0 if (low, high) == (1.0, 1.0) else rng.uniform(low, high)
    scale = resolution * factor / min(h, w)
    size = (max(resolution, round(h * scale)), max(resolution, round(w * scale)))
    rgb = torch.nn.functional.interpolate(rgb[None], size=size, mode="bicubic", antialias=True, align_corners=False)[0]
    top = (size[0] - resolution) // 2 if center_crop else rng.randint(0, size[0] - resolution)
    left = (size[1] - resolution) // 2 if center_crop else rng.randint(0, size[1] - resolution)
    rgb = rgb[:, top : top + resolution, left : left + resolution].clamp(0.0, 1.0)
    if flip and rng.random() < 0.5:
        rgb = rgb.flip(-1)
    return rgb  # (3, resolution, resolution)


class ColorizationDataset(Dataset):
    """Color photo -> {"pixel_values": color in [-1,1], "gray_values": 3-channel gray (same Lab L) in [-1,1],
    "text": the text condition, "index"}. A file that fails to read at training time is replaced by the next one
    (a warning names it), so one bad image never stops training."""

    def __init__(self, examples: list[Example], resolution: int, seed: int = 0, center_crop: bool = False,
                 random_flip: bool = True, max_pixels: int = 100_000_000, resize_range: tuple[float, float] = (1, 1)):
        if not examples:
            raise ValueError("the training set is empty")
        if not 1.0 <= resize_range[0] <= resize_range[1]:
            raise ValueError(f"resize_range must be [low, high] with 1 <= low <= high, got {list(resize_range)}")
        self.resize_range = (float(resize_range[0]), float(resize_range[1]))
        self.examples, self.resolution, self.seed = examples, resolution, seed
        self.center_crop, self.random_flip, self.max_pixels = center_crop, random_flip, max_pixels
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        for attempt in range(len(self.examples)):
            example = self.examples[(index + attempt) % len(self.examples)]
            try:
                image = read_image(example.path, max_pixels=self.max_pixels)
                break
            except ImageReadError as err:
                logger.warning("skipping unreadable training image %s", err)
        else:
            raise RuntimeError("no training image could be read")
        rng = augmentation_rng(self.seed, self.epoch, index)
        rgb = torch.from_numpy(image.rgb).permute(2, 0, 1)  # (3, H, W) in [0, 1]
        rgb = resize_and_crop(rgb, self.resolution, rng, self.center_crop, self.random_flip, self.resize_range)
        return {"pixel_values": rgb * 2 - 1, "gray_values": rgb_to_gray(rgb) * 2 - 1, "text": example.text,
                "index": index}


class EpochShuffleSampler(Sampler[int]):
    """A permutation that depends only on (seed, epoch): resuming mid-epoch replays the same order."""

    def __init__(self, num_samples: int, seed: int, shuffle: bool = True):
        self.num_samples, self.seed, self.shuffle, self.epoch = num_samples, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.num_samples))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.num_samples, generator=generator).tolist())


def collate(batch: list[dict]) -> dict:
    """Stack tensors (images or latents), keep strings as lists, indices as a tensor."""
    out = {}
    for key, first in batch[0].items():
        values = [item[key] for item in batch]
        if isinstance(first, torch.Tensor):
            out[key] = torch.stack(values)  # (B, C, H, W)
        elif isinstance(first, int):
            out[key] = torch.tensor(values)
        else:
            out[key] = values
    return out
