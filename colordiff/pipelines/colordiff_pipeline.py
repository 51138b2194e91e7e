"""ColorDiffPipeline: grayscale photo -> color photo with the ColorDiff model (paper 000, Fig. 2).

The semantic priors (Sec. 3.3) come from the generators the model folder records in semantic_priors.yaml, or are
passed in precomputed: category and caption make the text condition, instances drive segmentation guidance (000 Eq.4-5).
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import DiffusionPipeline, SchedulerMixin
from diffusers.pipelines.pipeline_utils import StableDiffusionMixin
from transformers import CLIPTextModel, CLIPTokenizer

from colordiff.models import ConcatUNet2DConditionModel, LuminanceAwareAutoencoderKL
from colordiff.pipelines.base import ColorizationPipeline, stable_diffusion_parts
from colordiff.pipelines.recorded_priors import RecordsPriorGenerators, SafetensorsLoraLoaderMixin
from colordiff.schedulers import ddim_sampler, scheduler_prediction_type
from colordiff.semantics.config import PriorsConfig
from colordiff.semantics.generators import PriorGenerators
from colordiff.semantics.priors import ImagePriors, compose_prompt


class ColorDiffPipeline(RecordsPriorGenerators, ColorizationPipeline, SafetensorsLoraLoaderMixin,
                        StableDiffusionMixin, DiffusionPipeline):
    """Luminance-guided Stable Diffusion colorization: concat U-Net (000 Eq.1) + luminance-aware decoder (000 Eq.6).

    For each image: the grayscale version (from its Lab L) is encoded once, giving both z_c for the U-Net and the
    encoder features for the decoder's skips; DDIM with classifier-free guidance on the text produces z_0; the
    luminance-aware decoder reconstructs the color image; by default the input's exact L is kept and only the
    predicted a/b are used, upsampled to the input's size.

    diffusers' habits work: `save_pretrained` / `from_pretrained` (also `DiffusionPipeline.from_pretrained` and
    `AutoPipelineForImage2Image.from_pretrained`: importing colordiff.pipelines names the classes in diffusers),
    `from_pipe`, `enable_vae_tiling` / `enable_vae_slicing` (the luminance-aware decoder tiles its skips too),
    `enable_model_cpu_offload`, `enable_freeu`, `fuse_qkv_projections`, and LoRA (`load_lora_weights`, `fuse_lora`,
    `set_adapters`) on the U-Net and text encoder.
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"

    def __init__(
        self,
        vae: LuminanceAwareAutoencoderKL,
        unet: ConcatUNet2DConditionModel,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        scheduler: SchedulerMixin,
        prior_generators: PriorGenerators | None = None,
    ):
        super().__init__()
        if not isinstance(unet, ConcatUNet2DConditionModel):
            raise TypeError(f"unet must be a ConcatUNet2DConditionModel, got {type(unet).__name__}")
        if not isinstance(vae, LuminanceAwareAutoencoderKL):
            raise TypeError(f"vae must be a LuminanceAwareAutoencoderKL, got {type(vae).__name__}")
        self.register_modules(vae=vae, unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)
        self.prior_generators = prior_generators  # what semantic_priors.yaml records (from_pretrained fills it in)

    # -- construction -------------------------------------------------------------------------------------------
    @classmethod
    def from_stable_diffusion_components(cls, sd) -> ColorDiffPipeline:
        """An untrained ColorDiff model from SD components (identity fuse conv, zero skip alphas: it *is* SD, and
        predicts what SD's U-Net predicts: its scheduler's prediction_type, e.g. v for SD 2.x-v)."""
        return cls(
            vae=LuminanceAwareAutoencoderKL.from_vae(sd.vae),
            unet=ConcatUNet2DConditionModel.from_unet(
                sd.unet, prediction_type=scheduler_prediction_type(sd.scheduler)),
            text_encoder=sd.text_encoder,
            tokenizer=sd.tokenizer,
            scheduler=ddim_sampler(sd.scheduler.config),
        )

    @classmethod
    def from_stable_diffusion(cls, base: str | Path, dtype=None, **kwargs) -> ColorDiffPipeline:
        """Assemble an untrained ColorDiff model from Stable Diffusion 1.5 weights: a hub id or a local folder.

        Only safetensors weights are read. `kwargs` go to every `from_pretrained` (e.g. `local_files_only=True`).
        """
        return cls.from_stable_diffusion_components(stable_diffusion_parts(base, dtype, **kwargs))

    # -- what differs from SeAda (see ColorizationPipeline) ------------------------------------------------------
    def prior_prompt(self, priors: ImagePriors) -> str:
        """The text condition from an image's category and caption, with the model's template (or the default)."""
        if self.prior_generators is not None:
            return self.prior_generators.prompt(priors)
        return compose_prompt(PriorsConfig().prompt_template, priors.category, priors.caption)

    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        """CLIP text embeddings (B, L, d) of `prompts`, padded to the tokenizer's maximum length."""
        tokens = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        return self.text_encoder(tokens.input_ids.to(self.text_encoder.device))[0]  # (B, L, d)

    def encode_gray(self, gray: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Grayscale (B, 3, h, w) in [0, 1] -> z_c (B, 4, h/8, w/8) scaled for the U-Net, and the decoder skips."""
        posterior, features = self.vae.encode_with_features(gray.to(self.vae.dtype) * 2.0 - 1.0)
        return posterior.mode() * self.vae.config.scaling_factor, features

    def decode(self, latents: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
        """z_0 (B, 4, h/8, w/8) -> RGB (B, 3, h, w) in [0, 1] through the luminance-aware decoder."""
        decoded = self.vae.decode_with_features(latents.to(self.vae.dtype) / self.vae.config.scaling_factor, features)
        return ((decoded.float() + 1.0) / 2.0).clamp(0.0, 1.0)

    def encode_condition(self, gray: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """000 Eq.1's z_c (B, 4, h/8, w/8) for the concat U-Net, and the encoder features for the decoder's skips
        (000 Eq.6): both from one encoding of the gray image."""
        return self.encode_gray(gray)

    def denoiser(self) -> ConcatUNet2DConditionModel:
        return self.unet

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        return self.encode_prompt(texts)
