"""SeAdaPipeline: grayscale photo -> color photo with SeAda (paper 001, Fig. 2 and Fig. 4).

Gray caption Des_g (a captioner the model records in semantic_priors.yaml, precomputed priors, or `prompt`) ->
semantic adapter (001 Eq.2-3) -> e_r -> controlled SD (conditional mapper on the grayscale image, ControlNet, RCA) with
classifier-free guidance (the unconditional branch is the adapter's e_r of the negative prompt, "" by default),
DDIM -> VAE decoder -> the input's exact luminance with the model's a/b, at the input's size.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DiffusionPipeline, SchedulerMixin, UNet2DConditionModel
from diffusers.pipelines.pipeline_utils import StableDiffusionMixin
from transformers import CLIPTokenizer

from colordiff.models.control import ControlledDenoiser, SeAdaControlModel
from colordiff.models.semantic_adapter import SemanticAdapter
from colordiff.pipelines.base import ColorDiffPipelineOutput, ColorizationPipeline, stable_diffusion_parts
from colordiff.pipelines.recorded_priors import RecordsPriorGenerators, SafetensorsLoraLoaderMixin
from colordiff.schedulers import ddim_sampler, scheduler_prediction_type
from colordiff.semantics.generators import PriorGenerators
from colordiff.semantics.priors import ImagePriors

SeAdaPipelineOutput = ColorDiffPipelineOutput  # images (+ the priors used)


class SeAdaLoraLoaderMixin(SafetensorsLoraLoaderMixin):
    """LoRA for SeAda: keys prefixed `unet.` load into the (frozen-in-the-paper) U-Net, `control.` into the control
    model (ControlNet + RCA + mapper); `fuse_lora`, `unfuse_lora`, `set_adapters` act on both. Files are written by
    `save_lora_weights(dir, unet_lora_layers=..., control_lora_layers=...)` (train_seada with lora_rank > 0)."""

    _lora_loadable_modules = ["unet", "control"]
    _lora_model_names = ("unet", "control")
    control_name = "control"

    @classmethod
    def save_lora_weights(cls, save_directory, unet_lora_layers=None, control_lora_layers=None,
                          is_main_process: bool = True, weight_name: str | None = None, save_function=None,
                          safe_serialization: bool = True, unet_lora_adapter_metadata=None,
                          control_lora_adapter_metadata=None):
        """Write `pytorch_lora_weights.safetensors` with `unet.` and `control.` prefixed LoRA layers."""
        layers, metadata = {}, {}
        if unet_lora_layers:
            layers[cls.unet_name], metadata[cls.unet_name] = unet_lora_layers, unet_lora_adapter_metadata
        if control_lora_layers:
            layers[cls.control_name], metadata[cls.control_name] = control_lora_layers, control_lora_adapter_metadata
        if not layers:
            raise ValueError("pass unet_lora_layers and/or control_lora_layers")
        cls._save_lora_weights(save_directory=save_directory, lora_layers=layers, lora_metadata=metadata,
                               is_main_process=is_main_process, weight_name=weight_name, save_function=save_function,
                               safe_serialization=safe_serialization)

    def fuse_lora(self, components: list[str] = ("unet", "control"), lora_scale: float = 1.0,
                  safe_fusing: bool = False, adapter_names: list[str] | None = None, **kwargs):
        super().fuse_lora(components=list(components), lora_scale=lora_scale, safe_fusing=safe_fusing,
                          adapter_names=adapter_names, **kwargs)

    def unfuse_lora(self, components: list[str] = ("unet", "control"), **kwargs):
        super().unfuse_lora(components=list(components), **kwargs)


class SeAdaPipeline(RecordsPriorGenerators, ColorizationPipeline, SeAdaLoraLoaderMixin, StableDiffusionMixin,
                    DiffusionPipeline):
    """SeAda inference: semantic adapter + controlled Stable Diffusion. Same call as ColorDiffPipeline: `prompt`
    replaces the gray caption Des_g, `prompt_embeds` / `negative_prompt_embeds` are the adapter's refined embeddings
    e_r (B or 1, L, d); `priors`: the caption only; `seg_strength` is accepted (for the shared CLI) and ignored, as
    SeAda has no segmentation guidance. LoRA loads into the U-Net and the control model."""

    model_cpu_offload_seq = "adapter->control->unet->vae"
    prior_kinds = ("caption",)  # Des_g

    def __init__(self, vae: AutoencoderKL, unet: UNet2DConditionModel, control: SeAdaControlModel,
                 adapter: SemanticAdapter, tokenizer: CLIPTokenizer, scheduler: SchedulerMixin,
                 prior_generators: PriorGenerators | None = None):
        super().__init__()
        if not isinstance(control, SeAdaControlModel):
            raise TypeError(f"control must be a SeAdaControlModel, got {type(control).__name__}")
        if not isinstance(adapter, SemanticAdapter):
            raise TypeError(f"adapter must be a SemanticAdapter, got {type(adapter).__name__}")
        self.register_modules(vae=vae, unet=unet, control=control, adapter=adapter, tokenizer=tokenizer,
                              scheduler=scheduler)
        self.prior_generators = prior_generators  # the captioner, from semantic_priors.yaml

    # -- construction -------------------------------------------------------------------------------------------
    @classmethod
    def from_stable_diffusion_components(cls, sd, mapper_channels: int = 4, use_rca: bool = True,
                                         use_trainable_embedding: bool = True, rca_head_dim: int = 64) -> SeAdaPipeline:
        """An untrained SeAda model from SD components: it computes exactly SD's U-Net output on e_r. The mapper
        downsamples as much as the VAE does (three stride-2 layers for SD's 8x VAE). The control model records what
        SD's U-Net predicts (its scheduler's prediction_type)."""
        halvings = len(sd.vae.config.block_out_channels) - 1
        mapper_hidden = tuple(16 * 2**i for i in range(halvings - 1)) + (96,)  # (16, 32, 96) for SD's 8x
        return cls(
            vae=sd.vae, unet=sd.unet,
            control=SeAdaControlModel.from_unet(sd.unet, mapper_channels=mapper_channels, use_rca=use_rca,
                                                rca_head_dim=rca_head_dim, mapper_hidden=mapper_hidden,
                                                prediction_type=scheduler_prediction_type(sd.scheduler)),
            adapter=SemanticAdapter.from_text_encoder(sd.text_encoder, use_trainable_embedding=use_trainable_embedding),
            tokenizer=sd.tokenizer, scheduler=ddim_sampler(sd.scheduler.config),
        )

    @classmethod
    def from_stable_diffusion(cls, base: str | Path, dtype=None, mapper_channels: int = 4, use_rca: bool = True,
                              use_trainable_embedding: bool = True, rca_head_dim: int = 64, **kwargs) -> SeAdaPipeline:
        """Assemble an untrained SeAda model from Stable Diffusion 1.5 weights (hub id or folder; safetensors only).

        `kwargs` go to every `from_pretrained` (e.g. `local_files_only=True`)."""
        return cls.from_stable_diffusion_components(stable_diffusion_parts(base, dtype, **kwargs),
                                                    mapper_channels=mapper_channels, use_rca=use_rca,
                                                    use_trainable_embedding=use_trainable_embedding,
                                                    rca_head_dim=rca_head_dim)

    # -- what differs from ColorDiff (see ColorizationPipeline) ---------------------------------------------------
    def prior_prompt(self, priors: ImagePriors) -> str:
        """Des_g: the gray caption ("" without one)."""
        return priors.caption or ""

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Token ids (B, L), padded to the tokenizer's maximum length."""
        return self.tokenizer(texts, padding="max_length", max_length=self.tokenizer.model_max_length,
                              truncation=True, return_tensors="pt").input_ids

    def encode_captions(self, captions: list[str]) -> torch.Tensor:
        """001 Eq.2-3: gray captions -> refined embeddings e_r (B, L, d)."""
        return self.adapter(self.tokenize(captions)).e_r

    @property
    def denoiser_model(self) -> SeAdaControlModel:
        return self.control

    def encode_condition(self, gray: torch.Tensor) -> tuple[torch.Tensor, None]:
        """The control image is the gray image itself (B, 3, h, w): the conditional mapper encodes it."""
        return gray, None

    def denoiser(self) -> ControlledDenoiser:
        """The ControlNet (with its mapper) and RCA blocks steering SD's frozen U-Net."""
        return ControlledDenoiser(self.control, self.unet)

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        return self.encode_captions(texts)

    def decode(self, latents: torch.Tensor, decoder_input: None = None) -> torch.Tensor:
        """z_0 (B, 4, h/8, w/8) -> RGB (B, 3, h, w) in [0, 1] through SD's VAE decoder."""
        decoded = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
        return ((decoded.float() + 1.0) / 2.0).clamp(0.0, 1.0)
