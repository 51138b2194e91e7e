"""ColorDiff's denoising U-Net: SD's U-Net with the grayscale latent concatenated at its input (000 Eq.1)."""

from __future__ import annotations

import torch

# ModelMixin looks unused but is not: diffusers' pipeline loader finds a custom component's load method by
# looking its base class up by name in the component's module. Without it the model folder does not load.
from diffusers import ModelMixin, UNet2DConditionModel  # noqa: F401
from torch import nn

from colordiff.models._config import extend_init_signature


class ConcatUNet2DConditionModel(UNet2DConditionModel):
    """000 Eq.1: z'_t = conv1x1(concat(z_t, z_c)), then Stable Diffusion's U-Net unchanged.

    The 1x1 `condition_fuse` conv maps `in_channels + condition_channels` -> `in_channels`. Its identity-on-z_t,
    zero-on-z_c initialisation (`init_condition_fuse`) makes an untrained model exactly SD's U-Net, so fine-tuning
    starts from the text-to-image prior. Everything else (attention processors, gradient checkpointing, ControlNet
    residuals, `from_pretrained`) is the diffusers U-Net's. `prediction_type` records what training taught the model
    to predict (a scheduler's `prediction_type`: "epsilon", as both papers, or "v_prediction"); folders saved before
    the key existed load as "epsilon".
    """

    def __init__(self, *args, condition_channels: int = 4, prediction_type: str = "epsilon", **kwargs):
        super().__init__(*args, **kwargs)
        self.register_to_config(condition_channels=condition_channels, prediction_type=prediction_type)
        latent_channels = self.config.in_channels
        self.condition_fuse = nn.Conv2d(latent_channels + condition_channels, latent_channels, kernel_size=1)
        self.init_condition_fuse()

    @torch.no_grad()
    def init_condition_fuse(self) -> None:
        """Identity on z_t, zero on z_c, zero bias: the fused input equals z_t exactly."""
        latent_channels = self.config.in_channels
        weight = torch.zeros_like(self.condition_fuse.weight)  # (C, C + C_c, 1, 1)
        weight[:, :latent_channels, 0, 0] = torch.eye(latent_channels)
        self.condition_fuse.weight.copy_(weight)
        self.condition_fuse.bias.zero_()

    @classmethod
    def from_unet(cls, unet: UNet2DConditionModel, condition_channels: int | None = None,
                  prediction_type: str = "epsilon") -> ConcatUNet2DConditionModel:
        """Wrap a pretrained SD U-Net: same weights, identity-initialised fuse conv (the paper's initialisation).
        `prediction_type`: what the base U-Net predicts (its scheduler's; a diffusers U-Net does not record it)."""
        condition_channels = unet.config.in_channels if condition_channels is None else condition_channels
        config = {k: v for k, v in unet.config.items() if not k.startswith("_")}
        model = cls.from_config({**config, "condition_channels": condition_channels,
                                 "prediction_type": prediction_type})
        missing, unexpected = model.load_state_dict(unet.state_dict(), strict=False)
        if unexpected or any(not k.startswith("condition_fuse.") for k in missing):
            raise ValueError(f"U-Net weights do not match its config: missing={missing}, unexpected={unexpected}")
        # cast only when needed: ModelMixin.to(dtype) warns even when nothing changes
        return model.to(unet.device) if model.dtype == unet.dtype else model.to(unet.device, unet.dtype)

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor, *args,
                condition_latents: torch.Tensor, **kwargs):
        """Predict the noise of `sample` (B, 4, h, w) given the grayscale latent `condition_latents` (B, 4, h, w)."""
        if condition_latents.shape[0] != sample.shape[0] or condition_latents.shape[2:] != sample.shape[2:]:
            raise ValueError(
                f"condition_latents {tuple(condition_latents.shape)} must match sample {tuple(sample.shape)} "
                "in batch and spatial size"
            )
        fused = self.condition_fuse(torch.cat([sample, condition_latents.to(sample.dtype)], dim=1))  # (B, 4, h, w)
        return super().forward(fused, timestep, encoder_hidden_states, *args, **kwargs)


extend_init_signature(ConcatUNet2DConditionModel, UNet2DConditionModel, condition_channels=4, prediction_type="epsilon")
