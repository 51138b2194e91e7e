"""ColorDiff's luminance-aware VAE: SD's VAE with skips from the frozen encoder into the decoder (000 Eq.6)."""

from __future__ import annotations

import torch

# ModelMixin looks unused but is not: diffusers' pipeline loader finds a custom component's load method by
# looking its base class up by name in the component's module. Without it the model folder does not load.
from diffusers import AutoencoderKL, ModelMixin  # noqa: F401
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.utils.accelerate_utils import apply_forward_hook
from torch import nn

from colordiff.models._config import extend_init_signature


class LuminanceAwareAutoencoderKL(AutoencoderKL):
    """000 Eq.6: f^_up^j = f_up^j + alpha_i * conv(f_down^i), i = 0, 1, 2 and j = 3, 2, 1.

    f_down^i is the output of encoder down-block i's resnets (before its downsampler, resolution H / 2^i), computed
    from the grayscale input. It is added to the input of decoder up-block j = n - 1 - i (n = number of blocks), the
    only decoder point at the same resolution. alpha_i starts at zero, so an untrained model decodes exactly like SD's
    VAE; the skip convs keep their default initialisation so that alpha_i gets a gradient from the first step.
    The encoder stays frozen during training (000 Eq.7 trains the decoder, the skip convs and the alphas).

    `encode_with_features` / `decode_with_features` are this model's encoder and decoder; both honour diffusers'
    `enable_slicing()` and `enable_tiling()`. `decode(z)` has no features: it raises while a skip is active
    (`skips_active()`), and `decode_without_skips(z)` is the explicit choice to decode without them.
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
        """The parameters 000 Eq.6 adds (skip convs and alphas)."""
        return [*self.luminance_skips.parameters(), self.luminance_alphas]

    def skips_active(self) -> bool:
        """Whether any 000 Eq.6 skip changes the output (alpha_i != 0 and its conv not all zero): then a decode without
        the encoder features is not this model's decoder."""
        for alpha, conv in zip(self.luminance_alphas, self.luminance_skips, strict=True):
            weights = [conv.weight] if conv.bias is None else [conv.weight, conv.bias]
            if alpha.item() != 0 and any(w.any().item() for w in weights):
                return True
        return False

    # -- encoding: the latent distribution and the skip features f_down^i ------------------------------------------
    @apply_forward_hook
    def encode_with_features(self, x: torch.Tensor) -> tuple[DiagonalGaussianDistribution, list[torch.Tensor]]:
        """Encode `x` (B, 3, H, W) in [-1, 1]: the latent distribution and the 000 Eq.6 skip features f_down^i.

        Honours `enable_slicing()` (image by image) and `enable_tiling()` (tiles of `tile_sample_min_size` pixels,
        blended as diffusers' AutoencoderKL blends its tiled encoding: the moments at the latent resolution, each
        f_down^i at its own resolution H / 2^i).
        """
        if self.use_slicing and x.shape[0] > 1:
            parts = [self._encode_with_features(image) for image in x.split(1)]
            moments = torch.cat([m for m, _ in parts])  # (B, 8, h, w)
            features = [torch.cat(level) for level in zip(*(f for _, f in parts), strict=True)]
        else:
            moments, features = self._encode_with_features(x)
        return DiagonalGaussianDistribution(moments), features

    def _encode_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        size = self.tile_sample_min_size
        if self.use_tiling and (x.shape[-1] > size or x.shape[-2] > size):
            return self._tiled_encode_with_features(x)
        return self._encode_tile(x)

    def _encode_tile(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One encoder pass: the moments (B, 8, h, w) and the features f_down^i (B, C_i, H / 2^i, W / 2^i)."""
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
        return h, features

    def _tiled_encode_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """AutoencoderKL._tiled_encode with the skip features: the same tiles, overlap and blend, at every level."""
        size = self.tile_sample_min_size
        stride = int(size * (1 - self.tile_overlap_factor))
        tiles = [[self._encode_tile(x[:, :, i : i + size, j : j + size]) for j in range(0, x.shape[3], stride)]
                 for i in range(0, x.shape[2], stride)]
        moments = self._blend_tiles([[m for m, _ in row] for row in tiles], self.tile_latent_min_size)
        features = [self._blend_tiles([[f[level] for _, f in row] for row in tiles], size // 2**level)
                    for level in range(self.config.luminance_skip_levels)]  # (B, C_i, H / 2^i, W / 2^i)
        return moments, features

    # -- decoding ---------------------------------------------------------------------------------------------------
    @apply_forward_hook
    def decode_with_features(self, z: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
        """Decode `z` (B, 4, h, w) with the grayscale skip features (000 Eq.6); returns (B, 3, H, W) in about [-1, 1].

        Honours `enable_slicing()` (image by image) and `enable_tiling()`: latent tiles of `tile_latent_min_size`
        with diffusers' overlap and blend (AutoencoderKL.tiled_decode), each f_down^i cut to the same region at its
        own resolution.
        """
        self._check_features(z, features)
        if self.use_slicing and z.shape[0] > 1:
            return torch.cat([self._decode_with_features(z[k : k + 1], [f[k : k + 1] for f in features])
                              for k in range(z.shape[0])])  # (B, 3, H, W)
        return self._decode_with_features(z, features)

    def _check_features(self, z: torch.Tensor, features: list[torch.Tensor]) -> None:
        levels = self.config.luminance_skip_levels
        if len(features) != levels:
            raise ValueError(f"expected {levels} luminance features, got {len(features)}")
        halvings = len(self.config.block_out_channels) - 1
        for i, f in enumerate(features):
            expected = (z.shape[0], z.shape[2] * 2 ** (halvings - i), z.shape[3] * 2 ** (halvings - i))
            if (f.shape[0], *f.shape[-2:]) != expected:
                raise ValueError(f"luminance feature {i} has shape {tuple(f.shape)}; latents {tuple(z.shape)} need "
                                 f"batch {expected[0]} at {expected[1]}x{expected[2]}")

    def _decode_with_features(self, z: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
        size = self.tile_latent_min_size
        if self.use_tiling and (z.shape[-1] > size or z.shape[-2] > size):
            return self._tiled_decode_with_features(z, features)
        return self._decode_tile(z, features)

    def _decode_tile(self, z: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
        """000 Eq.6 in one decoder pass: f_up^j + alpha_i conv(f_down^i) into up-block j = n - 1 - i."""
        levels = self.config.luminance_skip_levels
        decoder = self.decoder
        checkpointing = torch.is_grad_enabled() and decoder.gradient_checkpointing

        def run(block, h):
            return decoder._gradient_checkpointing_func(block, h, None) if checkpointing else block(h, None)

        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        h = run(decoder.mid_block, decoder.conv_in(z))
        num_blocks = len(decoder.up_blocks)
        h = h.to(next(iter(decoder.up_blocks.parameters())).dtype)
        for j, up_block in enumerate(decoder.up_blocks):
            i = num_blocks - 1 - j
            if i < levels:
                skip = self.luminance_skips[i](features[i].to(h.dtype))  # (B, C_{i+1}, H / 2^i, W / 2^i)
                h = h + self.luminance_alphas[i].to(h.dtype) * skip
            h = run(up_block, h)
        return decoder.conv_out(decoder.conv_act(decoder.conv_norm_out(h)))  # (B, 3, H, W)

    def _tiled_decode_with_features(self, z: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
        """AutoencoderKL.tiled_decode with 000 Eq.6: each latent tile decoded with its region of every f_down^i."""
        size = self.tile_latent_min_size
        stride = int(size * (1 - self.tile_overlap_factor))
        halvings = len(self.config.block_out_channels) - 1
        scales = [2 ** (halvings - i) for i in range(len(features))]  # f_down^i pixels per latent pixel
        rows = []
        for i in range(0, z.shape[2], stride):
            row = []
            for j in range(0, z.shape[3], stride):
                cut = [f[:, :, i * s : (i + size) * s, j * s : (j + size) * s] for f, s in zip(features, scales,
                                                                                                strict=True)]
                row.append(self._decode_tile(z[:, :, i : i + size, j : j + size], cut))  # (B, 3, <=8 size, <=8 size)
            rows.append(row)
        return self._blend_tiles(rows, self.tile_sample_min_size)  # (B, 3, H, W)

    def _blend_tiles(self, rows: list[list[torch.Tensor]], tile_size: int) -> torch.Tensor:
        """diffusers' tile assembly: blend each tile with the one above and the one to its left over
        tile_size * tile_overlap_factor pixels, keep its first tile_size - blend rows and columns, concatenate."""
        blend_extent = int(tile_size * self.tile_overlap_factor)
        row_limit = tile_size - blend_extent
        result_rows = []
        for i, row in enumerate(rows):
            result_row = []
            for j, tile in enumerate(row):
                if i > 0:
                    tile = self.blend_v(rows[i - 1][j], tile, blend_extent)
                if j > 0:
                    tile = self.blend_h(row[j - 1], tile, blend_extent)
                result_row.append(tile[:, :, :row_limit, :row_limit])
            result_rows.append(torch.cat(result_row, dim=3))
        return torch.cat(result_rows, dim=2)

    def decode(self, z: torch.Tensor, return_dict: bool = True, generator=None):
        """SD's decode, without the 000 Eq.6 skips: allowed only while they change nothing (an untrained model, which
        decodes exactly like SD's VAE). With active skips it raises: decode_with_features(z, features) is this
        model's decoder, and decode_without_skips(z) the explicit way to leave the skips out."""
        if self.skips_active():
            raise ValueError("this luminance-aware VAE has active 000 Eq.6 skips, which decode(z) would ignore: call "
                             "decode_with_features(z, features) with the gray image's encoder features, or "
                             "decode_without_skips(z) to decode without them on purpose")
        return super().decode(z, return_dict=return_dict, generator=generator)

    def decode_without_skips(self, z: torch.Tensor, return_dict: bool = True, generator=None):
        """SD's decoder path with these weights and no 000 Eq.6 skips (alpha_i treated as 0), whatever the alphas are:
        for a comparison with the skips switched off. Same return type as AutoencoderKL.decode."""
        return super().decode(z, return_dict=return_dict, generator=generator)


extend_init_signature(LuminanceAwareAutoencoderKL, AutoencoderKL, luminance_skip_levels=3)
