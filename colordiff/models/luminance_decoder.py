"""ColorDiff's luminance-aware VAE: SD's VAE with skips from the frozen encoder into the decoder (paper 000, Eq.6)."""

from __future__ import annotations

import torch

# ModelMixin looks unused but is not: diffusers' pipeline loader finds a custom component's load method by
# looking its base class up by name in the component's module. Without it the model folder does not load.
from diffusers import AutoencoderKL, ModelMixin  # noqa: F401
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from torch import nn

from colordiff.models._config import extend_init_signature


class LuminanceAwareAutoencoderKL(AutoencoderKL):
    """Eq.6: f^_up^j = f_up^j + alpha_i * conv(f_down^i), i = 0, 1, 2 and j = 3, 2, 1.

    f_down^i is the output of encoder down-block i's resnets (before its downsampler, resolution H / 2^i), computed
    from the grayscale input. It is added to the input of decoder up-block j = n - 1 - i (n = number of blocks), the
    only decoder point at the same resolution. alpha_i starts at zero, so an untrained model decodes exactly like SD's
    VAE; the skip convs keep their default initialisation so that alpha_i gets a gradient from the first step.
    The encoder stays frozen during training (Eq.7 trains the decoder, the skip convs and the alphas).
    """

    def __init__(self, *args, luminance_skip_levels: int = 3, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_to_config(luminance_skip_levels=luminance_skip_levels)
        channels = list(self.config.block_out_channels)
        if not 0 <= luminance_skip_levels <= len(channels) - 1:
            raise ValueError(
                f"luminance_skip_levels={luminance_skip_levels} needs at least {luminance_skip_levels + 1} VAE blocks, "
                f"got {len(channels)}"
            )
        # encoder level i has channels[i]; the decoder up-block j = n-1-i receives channels[i+1]
        self.luminance_skips = nn.ModuleList(
            nn.Conv2d(channels[i], channels[i + 1], kernel_size=3, padding=1) for i in range(luminance_skip_levels)
        )
        self.luminance_alphas = nn.Parameter(torch.zeros(luminance_skip_levels))

    @classmethod
    def from_vae(cls, vae: AutoencoderKL, luminance_skip_levels: int | None = None) -> LuminanceAwareAutoencoderKL:
        """Wrap a pretrained SD VAE: same weights, zero alphas (decodes exactly like `vae` until trained).

        `luminance_skip_levels` None: the paper's 3 (SD's four-block VAE), or as many as a smaller VAE has (blocks - 1).
        """
        config = {k: v for k, v in vae.config.items() if not k.startswith("_")}
        if luminance_skip_levels is None:
            luminance_skip_levels = min(3, len(config["block_out_channels"]) - 1)
        model = cls.from_config({**config, "luminance_skip_levels": luminance_skip_levels})
        missing, unexpected = model.load_state_dict(vae.state_dict(), strict=False)
        if unexpected or any(not k.startswith("luminance_") for k in missing):
            raise ValueError(f"VAE weights do not match its config: missing={missing}, unexpected={unexpected}")
        # cast only when needed: ModelMixin.to(dtype) warns even when nothing changes
        return model.to(vae.device) if model.dtype == vae.dtype else model.to(vae.device, vae.dtype)

    def luminance_parameters(self) -> list[nn.Parameter]:
        """The parameters Eq.6 adds (skip convs and alphas)."""
        return [*self.luminance_skips.parameters(), self.luminance_alphas]

    def encode_with_features(self, x: torch.Tensor) -> tuple[DiagonalGaussianDistribution, list[torch.Tensor]]:
        """Encode `x` (B, 3, H, W) in [-1, 1]: the latent distribution and the Eq.6 skip features f_down^i."""
        encoder = self.encoder
        h = encoder.conv_in(x)
        features = []
        for i, block in enumerate(encoder.down_blocks):
            for resnet in block.resnets:
                h = resnet(h, temb=None)
            if i < self.config.luminance_skip_levels:
                features.append(h)  # (B, C_i, H / 2^i, W / 2^i)
            for downsampler in block.downsamplers or []:
                h = downsampler(h)
        h = encoder.mid_block(h)
        h = encoder.conv_out(encoder.conv_act(encoder.conv_norm_out(h)))
        if self.quant_conv is not None:
            h = self.quant_conv(h)
        return DiagonalGaussianDistribution(h), features

    def decode_with_features(self, z: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
        """Decode `z` (B, 4, h, w) with the grayscale skip features (Eq.6); returns (B, 3, H, W) in about [-1, 1]."""
        levels = self.config.luminance_skip_levels
        if len(features) != levels:
            raise ValueError(f"expected {levels} luminance features, got {len(features)}")
        decoder = self.decoder
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        h = decoder.mid_block(decoder.conv_in(z), None)
        num_blocks = len(decoder.up_blocks)
        h = h.to(next(iter(decoder.up_blocks.parameters())).dtype)
        for j, up_block in enumerate(decoder.up_blocks):
            i = num_blocks - 1 - j
            if i < levels:
                skip = self.luminance_skips[i](features[i].to(h.dtype))  # (B, C_{i+1}, H / 2^i, W / 2^i)
                h = h + self.luminance_alphas[i].to(h.dtype) * skip
            h = up_block(h, None)
        return decoder.conv_out(decoder.conv_act(decoder.conv_norm_out(h)))


extend_init_signature(LuminanceAwareAutoencoderKL, AutoencoderKL, luminance_skip_levels=3)
