"""Writing a latent cache for U-Net training (colordiff.latents): sharded across processes, resumable."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from tqdm.auto import tqdm

from colordiff.data import ColorizationDataset, collate
from colordiff.devices import DTYPES, mixed_precision_dtype
from colordiff.io import umask_permissions
from colordiff.latents import INDEX, encode_moments, shard_name, write_index, write_shard
from colordiff.training.common import load_base_pipeline, place, screened_examples
from colordiff.training.loop import make_accelerator
from colordiff.training.unet import TrainUNetConfig

logger = logging.getLogger(__name__)


@torch.no_grad()
def main(config: TrainUNetConfig) -> Path:
    """Encode every screened training image (center crop at `resolution`, and its mirror image when
    `random_flip`) into shards of `latents_shard_size` rows; shards already written are skipped."""
    if not config.latents_cache:
        raise ValueError("set latents_cache to the folder the cache should be written to")
    folder = Path(config.latents_cache)
    accelerator = make_accelerator(config)
    weight_dtype = mixed_precision_dtype(accelerator.mixed_precision)
    vae = place(load_base_pipeline(config).vae.eval(), accelerator.device, weight_dtype)
    examples = screened_examples(config, accelerator)
    dataset = ColorizationDataset(examples, config.resolution, center_crop=True, random_flip=False,
                                  max_pixels=config.max_pixels)
    size, storage = config.latents_shard_size, DTYPES[config.latents_dtype]
    shards = [range(start, min(start + size, len(dataset))) for start in range(0, len(dataset), size)]
    mine = [n for n in range(len(shards)) if n % accelerator.num_processes == accelerator.process_index]
    folder.mkdir(parents=True, exist_ok=True)
    for number in tqdm(mine, desc="latent shards", disable=not accelerator.is_local_main_process):
        if (folder / shard_name(number)).is_file():
            umask_permissions(folder / shard_name(number))  # one an earlier run wrote with the library's 0o600
            continue  # resumable: a shard is written atomically, so one that exists is whole
        rows = {name: [] for name in ("color_moments", "gray_latents", "color_moments_flipped", "gray_latents_flipped")}
        indices = list(shards[number])
        for start in range(0, len(indices), config.train_batch_size):
            batch = collate([dataset[i] for i in indices[start : start + config.train_batch_size]])
            color = batch["pixel_values"].to(accelerator.device, weight_dtype)  # (B, 3, H, W)
            gray = batch["gray_values"].to(accelerator.device, weight_dtype)
            variants = [("", color, gray)]
            if config.random_flip:
                variants.append(("_flipped", color.flip(-1), gray.flip(-1)))
            for suffix, c, g in variants:
                moments, gray_latents = encode_moments(vae, c, g)
                rows[f"color_moments{suffix}"].append(moments.to(storage).cpu())
                rows[f"gray_latents{suffix}"].append(gray_latents.to(storage).cpu())
        tensors = {name: torch.cat(parts) for name, parts in rows.items() if parts}
        # safetensors writes 0o600: the usual modes, so that a shared cache is readable by others
        umask_permissions(write_shard(folder, number, tensors, [dataset.examples[i].relative for i in indices]))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        missing = [n for n in range(len(shards)) if not (folder / shard_name(n)).is_file()]
        if missing:
            raise RuntimeError(f"{folder}: shards {missing[:5]} were not written")
        write_index(folder, {"shards": [shard_name(n) for n in range(len(shards))], "rows": len(dataset),
                             "resolution": config.resolution, "flipped": config.random_flip,
                             "dtype": config.latents_dtype, "model": config.pretrained_model_name_or_path})
        umask_permissions(folder / INDEX)
        accelerator.print(f"latent cache: {len(dataset)} images in {len(shards)} shards at {folder}")
    accelerator.end_training()
    return folder
