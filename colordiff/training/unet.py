"""Training ColorDiff's concat U-Net with the 000 Eq.2 loss (paper 000, section 4.1)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from torch import nn

from colordiff.config import setting
from colordiff.devices import mixed_precision_dtype
from colordiff.training.common import (
    batch_moments,
    build_dataset,
    export_pipeline,
    how_trained,
    latent_dataset,
    load_base_pipeline,
    noise_schedulers,
    place_frozen,
    restore_frozen,
    training_card,
    validation_grid,
)
from colordiff.training.config import NoiseScheduleConfig, TrainConfig, sample_timesteps
from colordiff.training.loop import make_accelerator, train
from colordiff.training.lora import LoraSettings, add_lora, fused, save_lora_file
from colordiff.training.losses import diffusion_loss

# trained fully beside a LoRA: the concat conv has no Stable Diffusion weights to adapt (its z_c half starts at zero)
FULLY_TRAINED = ["condition_fuse"]


@dataclass
class TrainUNetConfig(LoraSettings, NoiseScheduleConfig, TrainConfig):
    output_dir: str = "outputs/train_unet"
    conditioning_dropout: float = 0.05  # probability of training on the empty prompt (classifier-free guidance)
    latents_cache: str | None = None  # precomputed VAE latents (scripts/precompute_latents.py): no VAE per step
    latents_dtype: str = "float16"  # storage dtype of a cache written by scripts/precompute_latents.py
    latents_shard_size: int = 1024  # images per cache shard
    # learning rate of the 1x1 fuse conv of 000 Eq.1 (None: learning_rate). Its z_c half starts at zero and Adam
    # moves a weight by about the learning rate per step, so a short run at the U-Net's rate leaves the condition faint
    condition_fuse_learning_rate: float | None = setting(None, above=0)
    # share of training examples whose z_c is masked to a random ellipse (zeros elsewhere). 000 Eq.4 feeds the U-Net
    # z_c * M^i, the condition masked to one instance, which a U-Net trained on whole conditions has never seen.
    # 0 (the paper): every example whole
    condition_mask_probability: float = setting(0.0, min=0, max=1)


class UNetTask:
    """Trainable: the U-Net with its 1x1 fuse conv (lora_rank > 0: a LoRA on the U-Net and the fuse conv in full).
    Frozen: the VAE and the CLIP text encoder."""

    def __init__(self, config: TrainUNetConfig, accelerator):
        self.config, self.accelerator = config, accelerator
        self.pipe = load_base_pipeline(config)
        self.noise_scheduler, self.scheduler = noise_schedulers(config, self.pipe.scheduler)
        # the network records what it predicts: a pipeline refuses a scheduler set for another prediction type
        self.pipe.unet.register_to_config(prediction_type=self.noise_scheduler.config.prediction_type)
        weight_dtype = mixed_precision_dtype(accelerator.mixed_precision)
        self.kept = {}  # the frozen parts' exact weights, restored for export
        for frozen in (self.pipe.vae, self.pipe.text_encoder):  # frozen parts run in the mixed-precision dtype
            place_frozen(frozen.requires_grad_(False).eval(), accelerator.device, weight_dtype, self.kept)
        self.weight_dtype = weight_dtype
        unet = self.pipe.unet.train()
        if config.lora_rank > 0:
            add_lora(unet, config, fully_trained=FULLY_TRAINED)
        if config.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        if config.latents_cache:  # the VAE stays loaded for validation, but no step encodes with it
            self.dataset = latent_dataset(config)
        else:
            self.dataset = build_dataset(config, accelerator)

    def trainable(self) -> dict[str, nn.Module]:
        return {"unet": self.pipe.unet}

    def param_groups(self, named: list[tuple[str, nn.Parameter]]) -> list[dict]:
        """The fuse conv at condition_fuse_learning_rate (when set), everything else at learning_rate."""
        rate = self.config.condition_fuse_learning_rate
        fuse = [p for n, p in named if ".condition_fuse." in n]
        if rate is None or not fuse:
            return [{"params": [p for _, p in named]}]
        return [{"params": [p for n, p in named if ".condition_fuse." not in n]}, {"params": fuse, "lr": rate}]

    def loss(self, modules: dict[str, nn.Module], batch: dict) -> torch.Tensor:
        device, vae = self.accelerator.device, self.pipe.vae
        moments, gray = batch_moments(batch, vae, device, self.weight_dtype)
        batch_size = moments.shape[0]
        scale = vae.config.scaling_factor
        with torch.no_grad():
            latents = DiagonalGaussianDistribution(moments.float()).sample() * scale  # z ~ q(z | x) (B, 4, h, w)
            condition = gray.float() * scale  # z_c: the gray image's posterior mode, as at inference
            if self.config.condition_mask_probability > 0:  # 000 Eq.4's z_c * M^i, seen in training
                condition = condition * random_condition_masks(
                    batch_size, condition.shape[-2:], self.config.condition_mask_probability, condition.device)
            drop = torch.rand(batch_size) < self.config.conditioning_dropout
            prompts = ["" if d else text for d, text in zip(drop.tolist(), batch["text"], strict=True)]
            text_embeds = self.pipe.encode_prompt(prompts).float()  # (B, L, d)
        noise = torch.randn(latents.shape, device=latents.device, dtype=latents.dtype)  # by shape, not layout
        timesteps = sample_timesteps(self.config, self.noise_scheduler.config.num_train_timesteps, batch_size, device)
        return diffusion_loss(modules["unet"], self.noise_scheduler, latents, condition, text_embeds, noise, timesteps,
                              self.config.loss_weighting)

    def validate(self, modules: dict[str, nn.Module], config: TrainConfig):
        pipe = self._pipeline(modules)
        return validation_grid(pipe, config)

    def export(self, modules: dict[str, nn.Module], path: Path) -> None:
        """The model folder (LoRA fused); with lora_rank > 0 also output_dir/lora/, the diffusers LoRA file."""
        for frozen in (self.pipe.vae, self.pipe.text_encoder):
            restore_frozen(frozen, self.kept)
        unet, lora_file = modules["unet"], None
        if self.config.lora_rank > 0:
            lora_file = save_lora_file(path.parent / "lora", {"unet": unet})
        how = how_trained(self.config, "train_unet.py, Eq.2", lora_also=" (condition_fuse trained in full)")
        export_pipeline(self._pipeline({"unet": fused(unet)}), path,
                        card=training_card(self.config, {"unet": how}, lora_file))

    def _pipeline(self, modules):
        from colordiff.pipelines import ColorDiffPipeline

        return ColorDiffPipeline(vae=self.pipe.vae, unet=modules["unet"], text_encoder=self.pipe.text_encoder,
                                 tokenizer=self.pipe.tokenizer, scheduler=self.scheduler)


def random_condition_masks(batch_size: int, size: tuple[int, int], probability: float,
                           device: torch.device | str) -> torch.Tensor:
    """(B, 1, h, w) in {0, 1}: ones for the examples kept whole, a random ellipse for a share `probability` of them
    (centre anywhere on the grid, semi-axes 10-45 % of the side, any rotation; never empty: the cell under the centre
    is always inside), so that training sees conditions masked as 000 Eq.4 masks them at inference."""
    h, w = size
    masked = torch.rand(batch_size, device=device) < probability  # (B,)
    centre = torch.rand(batch_size, 2, 1, 1, device=device)  # (B, 2, 1, 1): y, x in [0, 1)
    axes = 0.10 + 0.35 * torch.rand(batch_size, 2, 1, 1, device=device)  # (B, 2, 1, 1): semi-axes along v, u
    angle = math.pi * torch.rand(batch_size, 1, 1, device=device)  # (B, 1, 1)
    dy = (torch.arange(h, device=device).view(1, h, 1) + 0.5) / h - centre[:, 0]  # (B, h, 1)
    dx = (torch.arange(w, device=device).view(1, 1, w) + 0.5) / w - centre[:, 1]  # (B, 1, w)
    cos, sin = angle.cos(), angle.sin()
    u = (dx * cos + dy * sin) / axes[:, 1]  # (B, h, w)
    v = (dy * cos - dx * sin) / axes[:, 0]  # (B, h, w)
    inside = (u.square() + v.square() <= 1) | ~masked.view(-1, 1, 1)  # (B, h, w)
    return inside[:, None].float()  # (B, 1, h, w)


def main(config: TrainUNetConfig) -> Path:
    accelerator = make_accelerator(config)
    return train(config, UNetTask(config, accelerator), accelerator)
