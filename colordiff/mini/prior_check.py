"""Does the stand-in base's text-to-image prior read its text? Its own samples per category prompt, told apart by color.

Every caption that at least `min_photos` training photos share is a category ("a photo of a forest"). Each category's
color is the centroid of its training photos' mean Lab colors. A prior sample counts as right when the nearest
centroid to its own mean Lab color is its prompt's category. The training photos themselves, classified the same
way, give the ceiling of this measure; chance is one over the number of categories. The samples are drawn with the
base's own scheduler at each guidance scale, with one seed per (category, sample) shared by every scale.

    python scripts/prior_check.py base=outputs/mini/base data_dir=outputs/mini/photos/train \
        captions=outputs/mini/photos/captions.jsonl output_dir=outputs/mini/prior_check
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from colordiff.color import rgb_to_lab
from colordiff.data import load_captions
from colordiff.io import atomic_write, write_image


@dataclass
class PriorCheckConfig:
    """Settings of scripts/prior_check.py."""

    base: str = "???"  # a base folder (scripts/make_mini_base.py)
    data_dir: str = "???"  # its training photos (PNG files named as in `captions`)
    captions: str = "???"  # JSONL with "path" and `caption_key` per photo
    caption_key: str = "caption_color"
    output_dir: str = "outputs/mini/prior_check"
    min_photos: int = 50  # a caption shared by this many training photos is a category
    samples: int = 8  # per category and guidance scale
    steps: int = 30
    guidance_scales: list[float] = field(default_factory=lambda: [1.0, 3.0, 7.5])
    size: int = 64
    seed: int = 0


def categories(captions: str, key: str, min_photos: int, data_dir: str) -> dict[str, list[str]]:
    """caption -> the photo files of data_dir that share it, for every non-empty caption of at least min_photos of
    them (a captions file may also list held-out photos, which are not in data_dir)."""
    groups = defaultdict(list)
    for path, text in load_captions(captions, key).items():
        if text and (Path(data_dir) / path).is_file():
            groups[text].append(path)
    return {text: sorted(paths) for text, paths in sorted(groups.items()) if len(paths) >= min_photos}


def mean_lab(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1] -> (N, 3): each image's mean L, a, b."""
    return rgb_to_lab(images.float()).mean(dim=(2, 3))


def nearest(colors: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """(N, 3) mean colors, (K, 3) centroids -> (N,) index of the nearest centroid (Euclidean in Lab)."""
    return torch.cdist(colors, centroids).argmin(dim=1)


def centre_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 3, size, size), the centre square (H, W >= size)."""
    top, left = (images.shape[-2] - size) // 2, (images.shape[-1] - size) // 2
    return images[..., top:top + size, left:left + size]


def prior_check(config: PriorCheckConfig) -> Path:
    from diffusers import StableDiffusionPipeline

    from colordiff.mini.photos import read_rgb

    groups = categories(config.captions, config.caption_key, config.min_photos, config.data_dir)
    if len(groups) < 2:
        raise ValueError(f"{config.captions}: fewer than 2 captions shared by {config.min_photos} photos")
    texts = list(groups)

    def photo(name: str) -> torch.Tensor:  # (1, 3, h, w): the photos differ in size
        return read_rgb(Path(config.data_dir) / name)[None]

    photo_colors = [torch.cat([mean_lab(photo(p)) for p in paths]) for paths in groups.values()]  # K x (n_k, 3)
    centroids = torch.stack([c.mean(0) for c in photo_colors])  # (K, 3)
    ceiling = float(np.mean([float((nearest(c, centroids) == k).float().mean()) for k, c in enumerate(photo_colors)]))
    pipe = StableDiffusionPipeline.from_pretrained(config.base, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    out = Path(config.output_dir)
    report = {"base": config.base, "categories": {t: len(groups[t]) for t in texts}, "chance": 1 / len(texts),
              "photos_ceiling": ceiling, "centroids_lab": centroids.tolist(), "guidance": {}}
    tiles = []
    for scale in config.guidance_scales:
        colors, right = [], []
        for k, text in enumerate(texts):
            generators = [torch.Generator().manual_seed(config.seed + 1000 * k + i) for i in range(config.samples)]
            images = pipe([text] * config.samples, height=config.size, width=config.size, guidance_scale=scale,
                          num_inference_steps=config.steps, generator=generators, output_type="pt").images
            lab = mean_lab(images)  # (samples, 3)
            right.append(float((nearest(lab, centroids) == k).float().mean()))
            colors.append(lab.mean(0).tolist())
            if scale == config.guidance_scales[-1]:  # the grid: a training photo of the category, then samples
                tiles.append(torch.cat([centre_crop(photo(groups[text][0]), config.size), images]))
        report["guidance"][str(scale)] = {"accuracy": float(np.mean(right)),
                                          "per_category": dict(zip(texts, right, strict=True)),
                                          "mean_lab": dict(zip(texts, colors, strict=True))}
    grid = torch.cat([torch.cat(list(row), dim=2) for row in tiles], dim=1)  # (3, K * size, (1 + samples) * size)
    write_image(out / "samples.png", grid.permute(1, 2, 0).numpy())
    with atomic_write(out / "prior_check.json") as tmp:
        tmp.write_text(json.dumps(report, indent=1))
    return out / "prior_check.json"
