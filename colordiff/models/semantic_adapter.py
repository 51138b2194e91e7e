"""SeAda's semantic adapter (paper 001, Sec. 3.3, Fig. 3): 001 Eq.2-3 and the L_r loss of 001 Eq.5.

Part (a): a trainable CLIP text encoder SeEnc on the grayscale caption Des_g -> e_g (B, L, d).
Part (b): a frozen CLIP text encoder on the color caption Des_c -> e_c (B, L, d); used in training only (L_r).
Part (c): a trainable embedding e_t (L, d) that refines e_g by cross-attention, then an MLP:
    e_r = MLP(softmax(e_t e_g^T / alpha) e_g + e_g)                                                    (001 Eq.3)
Parts (b) and (c) can be left out (Table 3): without (c), e_r = MLP(e_g).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.utils import BaseOutput
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel

_DROPPED_CONFIG_KEYS = ("transformers_version", "architectures", "_name_or_path", "torch_dtype", "dtype")


def text_config_dict(config: CLIPTextConfig) -> dict:
    """A JSON-able dict of a CLIP text config (what the adapter's config stores to rebuild its encoders)."""
    return {k: v for k, v in config.to_dict().items() if k not in _DROPPED_CONFIG_KEYS}


@dataclass
class SemanticAdapterOutput(BaseOutput):
    # Every field has a default, as in diffusers' own outputs: BaseOutput then rebuilds from a mapping, which is how
    # accelerate returns a mixed-precision module's outputs (type(output)({...})); without them bf16 training fails.
    e_r: torch.Tensor = None  # (B, L, d) refined embedding: the controlled U-Net's text condition
    e_g: torch.Tensor = None  # (B, L, d) grayscale-caption embedding, part (a)
    e_c: torch.Tensor | None = None  # (B, L, d) color-caption embedding, part (b); None without color captions


class SemanticMLP(nn.Module):
    """The MLP of 001 Eq.3, residual with a zero-initialised output layer: it starts as the identity."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.gelu(self.fc1(x)))


class SemanticAdapter(ModelMixin, ConfigMixin):
    """001 Eq.2-3: e_g = SeEnc(Des_g); e_r = MLP(softmax(e_t e_g^T / alpha) e_g + e_g).

    `alpha` None means sqrt(d). e_t starts at zero (uniform attention over e_g's tokens); see the README for why
    the MLP is residual. Save/load with diffusers' `save_pretrained` / `from_pretrained` (safetensors).
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(self, text_config: dict | None = None, use_color_encoder: bool = True,
                 use_trainable_embedding: bool = True, alpha: float | None = None, mlp_ratio: float = 4.0):
        super().__init__()
        config = CLIPTextConfig(**(text_config or {}))
        dim, length = config.hidden_size, config.max_position_embeddings
        self.gray_encoder = CLIPTextModel(config)  # part (a), trainable
        self.color_encoder = CLIPTextModel(config).requires_grad_(False) if use_color_encoder else None  # part (b)
        # part (c): e_t (L, d)
        self.trainable_embedding = nn.Parameter(torch.zeros(length, dim)) if use_trainable_embedding else None
        self.mlp = SemanticMLP(dim, int(dim * mlp_ratio))
        self.scale = 1.0 / (math.sqrt(dim) if alpha is None else alpha)

    @classmethod
    def from_text_encoder(cls, text_encoder: CLIPTextModel, **kwargs) -> SemanticAdapter:
        """Parts (a) and (b) initialised from a pretrained CLIP text encoder (SD's), e_t zero, MLP identity."""
        adapter = cls(text_config=text_config_dict(text_encoder.config), **kwargs)
        adapter.gray_encoder.load_state_dict(text_encoder.state_dict())
        if adapter.color_encoder is not None:
            adapter.color_encoder.load_state_dict(text_encoder.state_dict())
        adapter.to(text_encoder.device)
        return adapter if adapter.dtype == text_encoder.dtype else adapter.to(dtype=text_encoder.dtype)

    def remove_trainable_embedding(self) -> None:
        """Drop part (c) (Table 3): e_r = MLP(e_g); the saved config records it."""
        self.trainable_embedding = None
        self.register_to_config(use_trainable_embedding=False)

    def enable_gradient_checkpointing(self) -> None:  # the CLIP encoder's own; ModelMixin's expects diffusers blocks
        self.gray_encoder.gradient_checkpointing_enable()

    def refine(self, e_g: torch.Tensor) -> torch.Tensor:
        """001 Eq.3: e_r = MLP(softmax(e_t e_g^T / alpha) e_g + e_g); e_g (B, L, d) -> e_r (B, L, d)."""
        if self.trainable_embedding is None:
            return self.mlp(e_g)
        e_t = self.trainable_embedding.to(e_g.dtype)  # (L, d)
        scores = torch.einsum("ld,bmd->blm", e_t, e_g) * self.scale  # (B, L, L)
        attended = torch.softmax(scores.float(), dim=-1).to(e_g.dtype) @ e_g  # (B, L, d)
        return self.mlp(attended + e_g)

    def encode_gray(self, input_ids: torch.Tensor) -> torch.Tensor:
        """001 Eq.2: e_g = SeEnc(Des_g), token ids (B, L) -> (B, L, d)."""
        return self.gray_encoder(input_ids.to(self.device))[0]

    def encode_color(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Part (b): e_c of the color caption, always without gradient (the encoder is frozen)."""
        if self.color_encoder is None:
            raise ValueError("this semantic adapter has no color encoder (part (b) is switched off)")
        with torch.no_grad():
            return self.color_encoder(input_ids.to(self.device))[0]

    def forward(self, gray_ids: torch.Tensor, color_ids: torch.Tensor | None = None) -> SemanticAdapterOutput:
        """Token ids of Des_g (B, L) [and Des_c (B, L)] -> e_r, e_g [, e_c]."""
        e_g = self.encode_gray(gray_ids)
        e_c = self.encode_color(color_ids) if color_ids is not None else None
        return SemanticAdapterOutput(e_r=self.refine(e_g), e_g=e_g, e_c=e_c)


def reconstruction_loss(output: SemanticAdapterOutput, target: str = "e_g") -> torch.Tensor:
    """001 Eq.5: L_r = MSE(e_c, e_g) as printed (target "e_g"), or MSE(e_c, e_r) (target "e_r")."""
    if output.e_c is None:
        raise ValueError("L_r needs the color-caption embedding e_c")
    if target not in ("e_g", "e_r"):
        raise ValueError(f"L_r target must be 'e_g' or 'e_r', got {target!r}")
    return F.mse_loss(getattr(output, target).float(), output.e_c.float())
