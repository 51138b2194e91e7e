"""Pieces both ColorDiff training tasks use: the base model, the dataset, the validation grid."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from diffusers import DDPMScheduler, SchedulerMixin
from PIL import Image

from colordiff.color import rgb_to_gray
from colordiff.data import ColorizationDataset, Example, list_images, load_captions, screen_images, text_for
from colordiff.errors import UsageError
from colordiff.io import ImageReadError, atomic_write, is_image_path, read_image
from colordiff.latents import LatentCacheDataset, encode_moments, read_index
from colordiff.pipelines import ColorDiffPipeline, load_pipeline
from colordiff.pipelines.registry import SD_COMPONENTS, UnknownPipelineError, guarded_load
from colordiff.training.config import NoiseScheduleConfig, TrainConfig, schedule_settings

logger = logging.getLogger(__name__)


def place(module, device, dtype=None):
    """Move a module, casting only when the dtype really changes (diffusers warns on every cast)."""
    module.to(device)
    if dtype is not None and module.dtype != dtype:
        module.to(dtype=dtype)
    return module


def place_frozen(module, device, dtype, kept: dict) -> None:
    """Move a frozen module and cast it to the mixed-precision `dtype` for speed, keeping its exact weights (on the
    CPU, in `kept`) when the cast loses precision: the exported model holds the frozen parts as they were loaded,
    not rounded to bf16 / fp16 (a merge of separately trained parts compares them)."""
    if dtype is not None and module.dtype != dtype and id(module) not in kept:
        kept[id(module)] = {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}
    place(module, device, dtype)


def restore_frozen(module, kept: dict) -> None:
    """On the CPU in float32, with the exact weights place_frozen kept (if it kept any)."""
    place(module, "cpu", torch.float32)
    if id(module) in kept:
        module.load_state_dict(kept[id(module)])


def load_base_pipeline(config: TrainConfig) -> ColorDiffPipeline:
    """A ColorDiff model folder / hub id as it is, or Stable Diffusion 1.5 weights turned into an untrained one."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    source = config.pretrained_model_name_or_path
    try:
        return load_pipeline(source, local_files_only=config.local_files_only)
    except UnknownPipelineError:  # a model folder of another pipeline: assume SD1.5 layout
        pass
    return guarded_load(source, lambda: ColorDiffPipeline.from_stable_diffusion(
        source, local_files_only=config.local_files_only), SD_COMPONENTS, local_files_only=config.local_files_only)


def noise_schedulers(config: NoiseScheduleConfig, scheduler: SchedulerMixin) -> tuple[DDPMScheduler, SchedulerMixin]:
    """The training scheduler (DDPM) and the sampler for validation and the exported folder (the model's own scheduler
    class, DDIM), both from the model's scheduler config with the noise schedule settings: inference samples on the
    schedule, and for the prediction type, that training used."""
    settings = schedule_settings(config)
    return (DDPMScheduler.from_config(scheduler.config, **settings),
            type(scheduler).from_config(scheduler.config, **settings))


def batch_moments(batch: dict, vae, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The color image's posterior moments and the gray image's posterior mode of a training batch: read from the
    latent cache when the batch comes from one, else encoded now with the frozen VAE (in `dtype`)."""
    if "color_moments" in batch:  # precomputed: the same moments encode_moments gives, read from the cache
        return batch["color_moments"].to(device), batch["gray_latents"].to(device)
    color = batch["pixel_values"].to(device, dtype)  # (B, 3, H, W)
    return encode_moments(vae, color, batch["gray_values"].to(device, dtype))


def export_pipeline(pipe: ColorDiffPipeline, path: Path, card: dict | None = None) -> None:
    """The final model folder: float32 weights on the CPU, written atomically (loadable by colordiff colorize), with
    its model card (`card`: training_card's keyword arguments for colordiff.model_card.write_model_card)."""
    from colordiff.pipelines.assemble import save_pipeline_atomically

    for part in (pipe.vae, pipe.unet, pipe.text_encoder):
        place(part, "cpu", torch.float32)
    save_pipeline_atomically(pipe, path, card=card)


def training_card(config: TrainConfig, trained: dict[str, str], lora_file: Path | None = None) -> dict:
    """The model card of a training export: derived from the model it started from, with this run's settings and
    what it trained ({component: how})."""
    source = config.pretrained_model_name_or_path
    return {"base_model": source, "previous": source, "training": config, "trained": trained, "lora_file": lora_file}


def how_trained(config, script: str, lora_also: str = "") -> str:
    """One line for a model card: full fine-tune or LoRA (with `lora_also`, what trained fully beside it), for how
    many steps, by which script."""
    rank = getattr(config, "lora_rank", 0)
    how = f"LoRA rank {rank}, fused into the weights{lora_also}" if rank else "full fine-tune"
    steps = config.max_train_steps
    return f"{how}, {steps} step{'' if steps == 1 else 's'} ({script})"


def screened_examples(config: TrainConfig, accelerator: Accelerator) -> list[Example]:
    """List and screen the training images once (main process), cached in output_dir for the other processes and
    for resumed runs; drops already-grayscale and unreadable files, counted and logged."""
    items = list_images(config.train_data_dir, config.train_file_list)
    listing = hashlib.sha256("\n".join(rel for _, rel in items).encode()).hexdigest()
    cache = Path(config.output_dir) / "screened_images.json"
    with accelerator.main_process_first():
        record = json.loads(cache.read_text()) if cache.is_file() else None
        if record is None or record["listing"] != listing or record["min_chroma"] != config.min_chroma:
            kept, gray, bad = screen_images(items, config.min_chroma, config.max_pixels)
            record = {"listing": listing, "min_chroma": config.min_chroma, "kept": [rel for _, rel in kept],
                      "gray": len(gray), "unreadable": [str(path) for path, _ in bad]}
            if accelerator.is_main_process:
                cache.parent.mkdir(parents=True, exist_ok=True)
                with atomic_write(cache) as tmp:
                    tmp.write_text(json.dumps(record))
    message = (f"training images: {len(items)} listed, {len(record['kept'])} kept, {record['gray']} dropped as "
               f"already grayscale (mean chroma < {config.min_chroma}), {len(record['unreadable'])} unreadable")
    logger.info(message)
    if accelerator.is_main_process:
        accelerator.print(message)
    if not record["kept"]:
        source = config.train_file_list or config.train_data_dir
        raise UsageError(f"{source}: no usable image ({len(items)} listed, {record['gray']} already grayscale, "
                         f"{len(record['unreadable'])} unreadable)")
    paths = dict((rel, path) for path, rel in items)
    text_of = text_function(config)
    return [Example(paths[rel], rel, text_of(rel)) for rel in record["kept"]]


def text_function(config: TrainConfig):
    """relative key -> the text condition, per config.text_source."""
    captions = load_captions(config.caption_file, config.caption_key) if config.text_source == "captions" else None
    return lambda relative: text_for(relative, config.text_source, captions)


def build_dataset(config: TrainConfig, accelerator: Accelerator) -> ColorizationDataset:
    """The screened training images with their texts, cropped and flipped per config."""
    return ColorizationDataset(screened_examples(config, accelerator), config.resolution, seed=config.seed,
                               center_crop=config.center_crop, random_flip=config.random_flip,
                               max_pixels=config.max_pixels, resize_range=tuple(config.resize_range))


def latent_dataset(config) -> LatentCacheDataset:
    """Training rows from a precomputed latent cache, checked against the training resolution."""
    info = read_index(config.latents_cache)
    if info["resolution"] != config.resolution:
        raise ValueError(f"{config.latents_cache}: cached at {info['resolution']} px, training at {config.resolution}")
    return LatentCacheDataset(config.latents_cache, text_function(config), seed=config.seed,
                              random_flip=config.random_flip)


def validation_files(config: TrainConfig, limit: int = 8) -> list[Path]:
    files = []
    for name in config.validation_images:
        path = Path(name)
        files += sorted(p for p in path.rglob("*") if is_image_path(p)) if path.is_dir() else [path]
    return files[:limit]


@torch.no_grad()
def validation_grid(pipe: ColorDiffPipeline, config: TrainConfig) -> Image.Image | None:
    """Rows of (gray input | colorized | original), each image at resolution x resolution, for the logs."""
    images = []
    for path in validation_files(config):
        try:
            images.append(read_image(path).rgb)
        except ImageReadError as err:
            logger.warning("validation image skipped: %s", err)
    if not images:
        return None
    pipe.set_progress_bar_config(disable=True)
    size = config.resolution
    squares = [np.asarray(Image.fromarray((im * 255).round().astype(np.uint8)).resize((size, size))) for im in images]
    colorized = pipe(squares, num_inference_steps=config.validation_inference_steps,
                     guidance_scale=config.validation_guidance_scale, resolution=size, output_type="np",
                     generator=[torch.Generator().manual_seed(i) for i in range(len(squares))]).images
    rows = []
    for square, result in zip(squares, colorized, strict=True):
        original = square.astype(np.float32) / 255
        gray = rgb_to_gray(torch.from_numpy(original).permute(2, 0, 1)).permute(1, 2, 0).numpy()
        rows.append(np.concatenate([gray, result, original], axis=1))
    return Image.fromarray((np.concatenate(rows, axis=0) * 255).round().astype(np.uint8))
