"""Precomputed VAE latents for U-Net training: two VAE encodes fewer per step.

A cache folder holds safetensors shards; each row is one training image (center crop at the training resolution):
the color image's posterior moments (mean and log-variance, so training still samples z ~ q(z | x) exactly as the
on-the-fly path does) and the gray image's latent z_c (the posterior mode, as at inference). With `random_flip` the
flipped image's rows are stored as well, since a VAE is not exactly flip-equivariant.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset

from colordiff.data import augmentation_rng
from colordiff.io import atomic_write

INDEX = "index.json"


def shard_name(number: int) -> str:
    return f"shard-{number:06d}.safetensors"


@torch.no_grad()
def encode_moments(vae, color: torch.Tensor, gray: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One encoder call for both images (B, 3, H, W) in [-1, 1] -> color moments (B, 8, h, w), gray z_c (B, 4, h, w)
    (unscaled: the training step applies the VAE's scaling factor)."""
    posterior = vae.encode(torch.cat([color, gray])).latent_dist
    batch = color.shape[0]
    # contiguous copies: slices of the joint batch would make randn_like & co. fill values in another order
    return posterior.parameters[:batch].contiguous(), posterior.mode()[batch:].contiguous()


def write_shard(folder: Path, number: int, tensors: dict[str, torch.Tensor], keys: list[str]) -> Path:
    path = folder / shard_name(number)
    with atomic_write(path) as tmp:
        save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata={"keys": json.dumps(keys)})
    return path


def write_index(folder: Path, info: dict) -> None:
    with atomic_write(folder / INDEX) as tmp:
        tmp.write_text(json.dumps(info, indent=1))


def read_index(folder: str | Path) -> dict:
    path = Path(folder) / INDEX
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no {INDEX}; write the cache with scripts/precompute_latents.py")
    return json.loads(path.read_text())


class LatentCacheDataset(Dataset):
    """Rows of a latent cache -> {"color_moments", "gray_latents", "text", "index"}; flips pick the flipped rows.
    `text_of(key)` gives an image's text condition (see colordiff.data.text_for).

    Rows are read lazily from the memory-mapped shards, so the cache may be far larger than memory.
    """

    def __init__(self, folder: str | Path, text_of, seed: int = 0, random_flip: bool = False):
        self.folder, self.seed = Path(folder), seed
        info = read_index(folder)
        if random_flip and not info["flipped"]:
            raise ValueError(f"{folder}: random_flip needs a cache written with random_flip=true")
        self.random_flip = random_flip
        self.rows: list[tuple[str, int, str]] = []  # (shard file, row, key)
        for name in info["shards"]:
            with safe_open(self.folder / name, "pt") as f:
                keys = json.loads(f.metadata()["keys"])
            self.rows += [(name, row, key) for row, key in enumerate(keys)]
        self.texts = {key: text_of(key) for _, _, key in self.rows}  # fails early on a key without text
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        name, row, key = self.rows[index]
        flipped = self.random_flip and augmentation_rng(self.seed, self.epoch, index).random() < 0.5
        suffix = "_flipped" if flipped else ""
        with safe_open(self.folder / name, "pt") as f:
            moments = f.get_slice(f"color_moments{suffix}")[row].float()  # (8, h, w)
            gray = f.get_slice(f"gray_latents{suffix}")[row].float()  # (4, h, w)
        return {"color_moments": moments, "gray_latents": gray, "text": self.texts[key], "index": index}
