"""Training ColorDiff's luminance-aware decoder with the Eq.7 loss (paper 000, section 4.1)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from colordiff.devices import mixed_precision_dtype
from colordiff.training.common import (
    build_dataset,
    export_pipeline,
    how_trained,
    load_base_pipeline,
    place_frozen,
    restore_frozen,
    training_card,
    validation_grid,
)
from colordiff.training.config import TrainConfig
from colordiff.training.loop import make_accelerator, train
from colordiff.training.losses import build_perceptual, decoder_loss


@dataclass
class TrainDecoderConfig(TrainConfig):
    output_dir: str = "outputs/train_decoder"
    perceptual_weight: float = 0.1  # lambda_p of Eq.7
    perceptual_weights: str = "package"  # LPIPS(VGG) weights: package | random | path/to/lpips_vgg.safetensors


class LuminanceDecoding(nn.Module):
    """The trainable path as a module, so that accelerate wraps it (DDP gradient sync, autocast) as one forward."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, latents: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
        return self.vae.decode_with_features(latents, features)  # (B, 3, H, W)


class DecoderTask:
    """Trainable: the decoder (with post_quant_conv), the Eq.6 skip convs and alphas. Frozen: the encoder
    (with quant_conv), so the latent space stays the one the U-Net was trained in. The U-Net and text encoder only
    run in validation: on the device in the mixed-precision dtype, exported as they were loaded."""

    def __init__(self, config: TrainDecoderConfig, accelerator):
        self.config, self.accelerator = config, accelerator
        self.pipe = load_base_pipeline(config)
        vae = self.pipe.vae
        vae.requires_grad_(False)
        for part in (vae.decoder, vae.post_quant_conv, vae.luminance_skips):
            if part is not None:
                part.requires_grad_(True)
        vae.luminance_alphas.requires_grad_(True)
        vae.train()
        vae.encoder.eval()
        if config.gradient_checkpointing:
            vae.enable_gradient_checkpointing()
        self.kept = {}  # the frozen parts' exact weights, restored for export
        weight_dtype = mixed_precision_dtype(accelerator.mixed_precision)
        for frozen in (self.pipe.unet, self.pipe.text_encoder):  # the VAE moves with the trained module (prepare)
            place_frozen(frozen.requires_grad_(False).eval(), accelerator.device, weight_dtype, self.kept)
        # perceptual_weight 0 trains on L2 alone: no LPIPS network is built (nor its weights read)
        self.perceptual = (build_perceptual(config.perceptual_weights).to(accelerator.device)
                           if config.perceptual_weight > 0 else None)
        self.dataset = build_dataset(config, accelerator)

    def trainable(self) -> dict[str, nn.Module]:
        return {"decoder": LuminanceDecoding(self.pipe.vae)}

    def loss(self, modules: dict[str, nn.Module], batch: dict) -> torch.Tensor:
        device = self.accelerator.device
        color = batch["pixel_values"].to(device)  # (B, 3, H, W) in [-1, 1]
        gray = batch["gray_values"].to(device)
        # the frozen encoder: one call gives z for the color image and the skip features of the gray one
        with torch.no_grad(), self.accelerator.autocast():
            posterior, features = self.pipe.vae.encode_with_features(torch.cat([color, gray]))
            latents = posterior.sample()[: color.shape[0]]  # z ~ q(z | color), as the U-Net's z_0 approximates
            features = [f[color.shape[0] :] for f in features]  # f_down^i of the gray image
        decoded = modules["decoder"](latents, features)
        return decoder_loss(decoded, color, self.perceptual, self.config.perceptual_weight)

    def validate(self, modules: dict[str, nn.Module], config: TrainConfig):
        return validation_grid(self._pipeline(modules), config)

    def export(self, modules: dict[str, nn.Module], path: Path) -> None:
        for frozen in (self.pipe.unet, self.pipe.text_encoder):
            restore_frozen(frozen, self.kept)
        pipe = self._pipeline(modules)
        how = "decoder, Eq.6 skip convs and alphas: " + how_trained(self.config, "train_decoder.py, Eq.7")
        export_pipeline(pipe, path, card=training_card(self.config, {"vae": how + "; encoder frozen"}))

    def _pipeline(self, modules):
        from colordiff.pipelines import ColorDiffPipeline

        return ColorDiffPipeline(vae=modules["decoder"].vae, unet=self.pipe.unet, text_encoder=self.pipe.text_encoder,
                                 tokenizer=self.pipe.tokenizer, scheduler=self.pipe.scheduler)


def main(config: TrainDecoderConfig) -> Path:
    accelerator = make_accelerator(config)
    return train(config, DecoderTask(config, accelerator), accelerator)
