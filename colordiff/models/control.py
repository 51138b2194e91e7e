"""SeAda's controlled T2I model (paper 001, Sec. 3.3, Fig. 4): conditional mapper + ControlNet + RCA blocks.

- Conditional mapper: four 4x4 convs, the first three with stride 2 (512 -> 64: three halvings give the 8x of SD's
  latent grid; the paper's "four stride-2 layers" would give 32), the last with stride 1 -> c_f (B, C_f, h, w).
- ControlNet E_con: a trainable copy of SD's encoder with zero convs (diffusers' `ControlNetModel.from_unet`). Its
  input is concat(z_t, c_f): its conv_in takes 4 + C_f channels, the z_t part copied from SD's conv_in, the c_f part
  zero. diffusers' separate hint embedding is replaced by `NoHintEmbedding` (the hint already entered through conv_in).
  Its zero-conv outputs are added to SD's skips and middle block as in ControlNet.
- RCA (representation cross-attention, PASD / SeeSR): after each of SD's up blocks, the block's output attends to the
  ControlNet's features at the same resolution (the input of the matching zero conv); the output projection starts
  at zero, so an untrained model is exactly SD. SD's U-Net is never modified: RCA runs in forward hooks on its up
  blocks, installed for the duration of one call.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ControlNetModel, ModelMixin, UNet2DConditionModel
from diffusers.configuration_utils import register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.attention_processor import Attention
from torch import nn

_CONTROLNET_KEYS = ("in_channels", "conditioning_channels", "conditioning_embedding_out_channels")


class ConditionalMapper(nn.Module):
    """Control image (B, 3, H, W) in [0, 1] -> c_f (B, C_f, H/2^n, W/2^n): n = len(hidden) stride-2 4x4 convs, then
    a stride-1 4x4 conv, SiLU between. SD's 8x VAE needs n = 3 (the default); a VAE that downsamples 4x needs n = 2."""

    def __init__(self, in_channels: int = 3, hidden: tuple[int, ...] = (16, 32, 96), out_channels: int = 4):
        super().__init__()
        if len(hidden) < 1:
            raise ValueError(f"the mapper needs at least one stride-2 layer, got hidden={hidden}")
        chans = (in_channels, *hidden)
        self.downs = nn.ModuleList(nn.Conv2d(a, b, 4, stride=2, padding=1)
                                   for a, b in zip(chans[:-1], chans[1:], strict=True))
        self.pad = nn.ZeroPad2d((1, 2, 1, 2))  # "same" padding for the even 4x4 kernel at stride 1
        self.conv_out = nn.Conv2d(hidden[-1], out_channels, 4)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image
        for conv in self.downs:
            x = F.silu(conv(x))
        return self.conv_out(self.pad(x))  # (B, C_f, H/2^n, W/2^n)


class NoHintEmbedding(nn.Module):
    """Stands in for ControlNet's hint embedding: the hint c_f enters through conv_in, so nothing is added here."""

    def forward(self, conditioning: torch.Tensor) -> torch.Tensor:
        return conditioning.new_zeros(())


class RCABlock(nn.Module):
    """Representation cross-attention: h + W_o Attn(q = GN(h), k = v = GN(f)) with W_o zero-initialised."""

    def __init__(self, channels: int, context_channels: int, head_dim: int, groups: int):
        super().__init__()
        heads = max(1, channels // head_dim)
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.context_norm = nn.GroupNorm(groups, context_channels, eps=1e-6)
        self.attn = Attention(query_dim=channels, cross_attention_dim=context_channels, heads=heads,
                              dim_head=channels // heads, out_bias=True)  # SDPA processor
        nn.init.zeros_(self.attn.to_out[0].weight)
        nn.init.zeros_(self.attn.to_out[0].bias)

    def forward(self, hidden: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, h, w = hidden.shape
        query = self.norm(hidden).flatten(2).transpose(1, 2)  # (B, h*w, C)
        keys = self.context_norm(context.to(hidden.dtype)).flatten(2).transpose(1, 2)  # (B, h'*w', C_ctl)
        out = self.attn(query, encoder_hidden_states=keys)  # (B, h*w, C)
        return hidden + out.transpose(1, 2).reshape(b, c, h, w)


def _feature_scales(unet_config) -> list[int]:
    """The downsampling exponent of each ControlNet residual (conv_in, each resnet, each downsampler)."""
    n, layers = len(unet_config["block_out_channels"]), unet_config["layers_per_block"]
    scales = [0]
    for k in range(n):
        scales += [k] * layers + ([k + 1] if k < n - 1 else [])
    return scales


def _feature_channels(unet_config) -> list[int]:
    chans, layers = unet_config["block_out_channels"], unet_config["layers_per_block"]
    out = [chans[0]]
    for k, c in enumerate(chans):
        out += [c] * layers + ([c] if k < len(chans) - 1 else [])
    return out


def rca_sources(unet_config) -> list[int]:
    """For each up block: the index of the ControlNet feature it attends to, the deepest one at its output scale."""
    n, scales = len(unet_config["block_out_channels"]), _feature_scales(unet_config)
    sources = []
    for i in range(n):
        scale = max(n - 2 - i, 0)  # up block i upsamples to 2^-(n-2-i); the last keeps full latent resolution
        sources.append(max(j for j, s in enumerate(scales) if s == scale))
    return sources


class SeAdaControlModel(ModelMixin, ConfigMixin, PeftAdapterMixin):
    """Mapper + ControlNet + RCA; `forward` runs SD's (frozen, unmodified) U-Net under their control.

    `prediction_type` records what training taught the controlled model to predict (a scheduler's `prediction_type`:
    "epsilon", as the paper, or "v_prediction"); folders saved before the key existed load as "epsilon".
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(self, controlnet_config: dict | None = None, unet_config: dict | None = None,
                 mapper_channels: int = 4, mapper_hidden: tuple[int, ...] = (16, 32, 96), use_rca: bool = True,
                 rca_head_dim: int = 64, prediction_type: str = "epsilon"):
        super().__init__()
        controlnet_config = dict(controlnet_config or {})
        controlnet_config["in_channels"] = controlnet_config.get("in_channels", 4)
        self.mapper = ConditionalMapper(3, tuple(mapper_hidden), mapper_channels)
        self.controlnet = ControlNetModel.from_config(controlnet_config)
        self.controlnet.controlnet_cond_embedding = NoHintEmbedding()
        self.rca = None
        if use_rca:
            unet_config = dict(unet_config or {})
            channels, groups = _feature_channels(unet_config), unet_config.get("norm_num_groups", 32)
            up_channels = list(reversed(unet_config["block_out_channels"]))
            self.rca = nn.ModuleList(RCABlock(up_channels[i], channels[j], rca_head_dim, groups)
                                     for i, j in enumerate(rca_sources(unet_config)))

    @classmethod
    def from_unet(cls, unet: UNet2DConditionModel, mapper_channels: int = 4, use_rca: bool = True,
                  **kwargs) -> SeAdaControlModel:
        """ControlNet copied from SD's encoder (zero convs), conv_in widened for c_f with zeros, RCA zero-output."""
        source = ControlNetModel.from_unet(unet)
        latent = unet.config.in_channels
        controlnet_config = {k: v for k, v in source.config.items() if not k.startswith("_") and k not in
                             _CONTROLNET_KEYS}
        controlnet_config["in_channels"] = latent + mapper_channels
        unet_config = {k: unet.config[k] for k in ("block_out_channels", "layers_per_block", "norm_num_groups")}
        model = cls(controlnet_config=controlnet_config, unet_config=unet_config, mapper_channels=mapper_channels,
                    use_rca=use_rca, **kwargs)
        state = {k: v for k, v in source.state_dict().items() if not k.startswith(("controlnet_cond_embedding.",
                                                                                   "conv_in."))}
        missing, unexpected = model.controlnet.load_state_dict(state, strict=False)
        if unexpected or set(missing) != {"conv_in.weight", "conv_in.bias"}:
            raise ValueError(f"ControlNet weights do not match: missing={missing}, unexpected={unexpected}")
        with torch.no_grad():
            weight = torch.zeros_like(model.controlnet.conv_in.weight)  # (C0, 4 + C_f, 3, 3)
            weight[:, :latent] = unet.conv_in.weight
            model.controlnet.conv_in.weight.copy_(weight)
            model.controlnet.conv_in.bias.copy_(unet.conv_in.bias)
        model.to(unet.device)
        return model if model.dtype == unet.dtype else model.to(dtype=unet.dtype)

    def remove_rca(self) -> None:
        """Drop the RCA blocks (Table 4, 'w/o RCA'); the saved config records it."""
        self.rca = None
        self.register_to_config(use_rca=False)

    def enable_gradient_checkpointing(self) -> None:
        self.controlnet.enable_gradient_checkpointing()

    @contextmanager
    def _rca_hooks(self, unet: UNet2DConditionModel, features: list[torch.Tensor]):
        """RCA after each of SD's up blocks, for the duration of one U-Net call."""
        sources = rca_sources(self.config.unet_config)

        def hook(index):
            return lambda module, args, output: self.rca[index](output, features[sources[index]])

        handles = [block.register_forward_hook(hook(i)) for i, block in enumerate(unet.up_blocks)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def forward(self, unet: UNet2DConditionModel, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor,
                control_image: torch.Tensor, use_rca: bool = True, conditioning_scale: float = 1.0):
        """eps_theta(z_t, t, c_f, e_r): sample z_t (B, 4, h, w), control_image (B, 3, 8h, 8w) in [0, 1],
        encoder_hidden_states e_r (B, L, d) -> diffusers' UNet2DConditionOutput with .sample (B, 4, h, w)."""
        c_f = self.mapper(control_image.to(sample.dtype))  # (B, C_f, h, w)
        if c_f.shape[-2:] != sample.shape[-2:]:
            raise ValueError(f"control image {tuple(control_image.shape)} maps to {tuple(c_f.shape)}, "
                             f"not the latent size of {tuple(sample.shape)}")
        raw: list[torch.Tensor] = []  # the ControlNet's features before its zero convs: what RCA attends to
        rca = use_rca and self.rca is not None
        handles = [conv.register_forward_hook(lambda m, args, out: raw.append(args[0]))
                   for conv in self.controlnet.controlnet_down_blocks] if rca else []
        try:
            down, mid = self.controlnet(torch.cat([sample, c_f], dim=1), timestep, encoder_hidden_states,
                                        controlnet_cond=c_f, conditioning_scale=conditioning_scale,
                                        return_dict=False)
        finally:
            for handle in handles:
                handle.remove()
        if not rca:
            return unet(sample, timestep, encoder_hidden_states, down_block_additional_residuals=down,
                        mid_block_additional_residual=mid)
        with self._rca_hooks(unet, raw):
            return unet(sample, timestep, encoder_hidden_states, down_block_additional_residuals=down,
                        mid_block_additional_residual=mid)


class ControlledDenoiser:
    """(z_t, t, e, condition_latents=control image) -> .sample: the call shape `colordiff.sampling` expects."""

    def __init__(self, control: SeAdaControlModel, unet: UNet2DConditionModel, use_rca: bool = True):
        self.control, self.unet, self.use_rca = control, unet, use_rca

    def __call__(self, sample, timestep, encoder_hidden_states, condition_latents):
        return self.control(self.unet, sample, timestep, encoder_hidden_states, condition_latents,
                            use_rca=self.use_rca)
