"""SeAdaPipeline: grayscale photo -> color photo with SeAda (paper 001, Fig. 2 and Fig. 4).

Gray caption Des_g (a captioner the model records in semantic_priors.yaml, precomputed priors, or `prompt`) ->
semantic adapter (Eq.2-3) -> e_r -> controlled SD (conditional mapper on the grayscale image, ControlNet, RCA) with
classifier-free guidance (the unconditional branch is the adapter's e_r of the negative prompt, "" by default),
DDIM -> VAE decoder -> the input's exact luminance with the model's a/b, at the input's size.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, SchedulerMixin, UNet2DConditionModel
from diffusers.pipelines.pipeline_utils import StableDiffusionMixin
from transformers import CLIPTextModel, CLIPTokenizer

from colordiff.images import ImageInput, Luminance, luminance_of, working_gray
from colordiff.models.control import ControlledDenoiser, SeAdaControlModel
from colordiff.models.semantic_adapter import SemanticAdapter
from colordiff.pipelines.call_args import (
    StepCallback,
    batch_noise,
    per_image,
    per_image_embeds,
)
from colordiff.pipelines.colordiff_pipeline import ColorDiffPipelineOutput
from colordiff.pipelines.conventions import ColorizationPipelineMixin, TextCondition
from colordiff.pipelines.recorded_priors import RecordsPriorGenerators, SafetensorsLoraLoaderMixin
from colordiff.sampling import initial_noise, sample
from colordiff.schedulers import check_prediction_type
from colordiff.semantics.generators import PriorGenerators, resolve_prior_kinds
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


class SeAdaPipeline(RecordsPriorGenerators, ColorizationPipelineMixin, SeAdaLoraLoaderMixin, StableDiffusionMixin,
                    DiffusionPipeline):
    """SeAda inference: semantic adapter + controlled Stable Diffusion. Same call contract as ColorDiffPipeline
    (`prompt_embeds` are the adapter's refined embeddings e_r); LoRA loads into the U-Net and the control model."""

    model_cpu_offload_seq = "adapter->control->unet->vae"

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
        downsamples as much as the VAE does (three stride-2 layers for SD's 8x VAE)."""
        halvings = len(sd.vae.config.block_out_channels) - 1
        mapper_hidden = tuple(16 * 2**i for i in range(halvings - 1)) + (96,)  # (16, 32, 96) for SD's 8x
        return cls(
            vae=sd.vae, unet=sd.unet,
            control=SeAdaControlModel.from_unet(sd.unet, mapper_channels=mapper_channels, use_rca=use_rca,
                                                rca_head_dim=rca_head_dim, mapper_hidden=mapper_hidden),
            adapter=SemanticAdapter.from_text_encoder(sd.text_encoder, use_trainable_embedding=use_trainable_embedding),
            tokenizer=sd.tokenizer, scheduler=DDIMScheduler.from_config(sd.scheduler.config),
        )

    @classmethod
    def from_stable_diffusion(cls, base: str | Path, dtype=None, mapper_channels: int = 4, use_rca: bool = True,
                              use_trainable_embedding: bool = True, rca_head_dim: int = 64, **kwargs) -> SeAdaPipeline:
        """Assemble an untrained SeAda model from Stable Diffusion 1.5 weights (hub id or folder; safetensors only).

        `kwargs` go to every `from_pretrained` (e.g. `local_files_only=True`)."""
        kwargs = {"use_safetensors": True, **kwargs}
        weights = {} if dtype is None else {"dtype": dtype}
        plain = {k: v for k, v in kwargs.items() if k != "use_safetensors"}
        sd = SimpleNamespace(
            unet=UNet2DConditionModel.from_pretrained(base, subfolder="unet", **weights, **kwargs),
            vae=AutoencoderKL.from_pretrained(base, subfolder="vae", **weights, **kwargs),
            text_encoder=CLIPTextModel.from_pretrained(base, subfolder="text_encoder", **weights, **kwargs),
            tokenizer=CLIPTokenizer.from_pretrained(base, subfolder="tokenizer", **plain),
            scheduler=DDIMScheduler.from_pretrained(base, subfolder="scheduler", **plain),
        )
        return cls.from_stable_diffusion_components(sd, mapper_channels=mapper_channels, use_rca=use_rca,
                                                    use_trainable_embedding=use_trainable_embedding,
                                                    rca_head_dim=rca_head_dim)

    # -- captions (the captioner prior) ---------------------------------------------------------------------------
    def resolve_priors(self, priors: str | list[str] | None = "auto") -> tuple[str, ...]:
        """SeAda uses the caption prior only; asking for category or segmentation is an error."""
        available = () if self.prior_generators is None else self.prior_generators.available
        origin = f"model {getattr(self.config, '_name_or_path', None) or '(in memory)'}"
        kinds = resolve_prior_kinds(priors, available, origin)
        if priors not in (None, "auto") and any(k != "caption" for k in kinds):
            raise ValueError(f"SeAda conditions on the gray caption only; cannot use priors {list(kinds)}")
        return tuple(k for k in kinds if k == "caption")

    def compute_priors(self, images: list[ImageInput], priors: str | list[str] | None = "auto") -> list[ImagePriors]:
        kinds = self.resolve_priors(priors)
        if not kinds:
            return [ImagePriors() for _ in images]
        return self.prior_generators.compute(images, kinds, self._execution_device, self.unet.dtype)

    def captions_for(self, images, priors, prompt) -> tuple[list[str], list[ImagePriors] | None]:
        """Des_g per image: `prompt` when given, else the caption prior (precomputed or computed now), else ""."""
        if prompt is not None:
            return per_image(prompt, len(images), "prompt"), None
        if isinstance(priors, list | tuple) and priors and isinstance(priors[0], ImagePriors | dict):
            if len(priors) != len(images):
                raise ValueError(f"got {len(priors)} precomputed priors for {len(images)} images")
            image_priors = [p if isinstance(p, ImagePriors) else ImagePriors.from_dict(p) for p in priors]
        elif self.resolve_priors(priors):
            image_priors = self.compute_priors(images, priors)
        else:
            return [""] * len(images), None
        return [p.caption or "" for p in image_priors], image_priors

    # -- pieces ---------------------------------------------------------------------------------------------------
    @property
    def _denoiser_config(self):
        return self.control.config

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Token ids (B, L), padded to the tokenizer's maximum length."""
        return self.tokenizer(texts, padding="max_length", max_length=self.tokenizer.model_max_length,
                              truncation=True, return_tensors="pt").input_ids

    def encode_captions(self, captions: list[str]) -> torch.Tensor:
        """Eq.2-3: gray captions -> refined embeddings e_r (B, L, d)."""
        return self.adapter(self.tokenize(captions)).e_r

    # -- call -------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, images=None, prompt: str | list[str] | None = None, num_inference_steps: int = 50,
                 guidance_scale: float = 7.5, generator=None, resolution: int = 512, keep_luminance: bool = True,
                 negative_prompt: str | list[str] | None = None, output_type: str = "pil", return_dict: bool = True,
                 priors="auto", seg_strength: float = 0.0, *, image=None, num_images_per_prompt: int = 1,
                 eta: float | None = None, latents=None, prompt_embeds: torch.Tensor | None = None,
                 negative_prompt_embeds: torch.Tensor | None = None, callback_on_step_end: Callable | None = None,
                 callback_on_step_end_tensor_inputs: list[str] = ("latents",)) -> ColorDiffPipelineOutput | tuple:
        """Colorize `images` (any sizes). `prompt` replaces the gray caption Des_g; `prompt_embeds` /
        `negative_prompt_embeds` replace the adapter's e_r (B or 1, L, d) of the caption / negative prompt; every
        other argument as in ColorDiffPipeline (`priors`: caption only). `seg_strength` is accepted for the shared
        CLI and ignored: SeAda has no segmentation guidance.
        """
        images, generators, initial = self._start_call(
            images, image, output_type, prompt, prompt_embeds, negative_prompt, negative_prompt_embeds,
            callback_on_step_end_tensor_inputs, num_images_per_prompt, generator, latents, guidance_scale,
            num_inference_steps)
        count = len(images)

        device = self._execution_device
        luminance = [luminance_of(im, device) for im in images]  # B x (1, 1, H, W), the only full-size tensors
        embeds = per_image_embeds(prompt_embeds, count, "prompt_embeds")
        if embeds is not None:
            captions, image_priors = [None] * count, None
        else:
            captions, image_priors = self.captions_for([Luminance(lum) for lum in luminance], priors, prompt)
        if image_priors:
            image_priors = [ImagePriors(caption=p.caption, extra={**p.extra, "prompt": c})
                            for p, c in zip(image_priors, captions, strict=True)]
        negative_embeds = per_image_embeds(negative_prompt_embeds, count, "negative_prompt_embeds")
        negatives = [None] * count if negative_embeds else per_image(negative_prompt or "", count, "negative prompt")

        texts = TextCondition(captions, embeds, negatives, negative_embeds)
        results = self._colorize_outputs(luminance, num_images_per_prompt, resolution, keep_luminance, output_type,
                                         lambda size, mine, indices: self._colorize_batch(
                                             [luminance[i] for i in mine], size, texts.take(mine),
                                             [generators[j] for j in indices], [initial[j] for j in indices],
                                             num_inference_steps, guidance_scale, eta, output_type == "latent",
                                             callback_on_step_end, callback_on_step_end_tensor_inputs))
        return ColorDiffPipelineOutput(images=results, priors=image_priors) if return_dict else (results,)

    def _refined_embeddings(self, texts: list[str | None], given: list[torch.Tensor] | None) -> torch.Tensor:
        """e_r (B, L, d): given, or the adapter's of `texts`."""
        return torch.cat(given).to(self._execution_device) if given is not None else self.encode_captions(texts)

    def _colorize_batch(self, luminance, size, texts: TextCondition, generators, initial, steps, guidance, eta,
                        return_latents, callback, callback_inputs):
        """Colorize images of one working size `size` as one batch; the decoded RGB (B, 3, h, w), or z_0."""
        device, dtype = self._execution_device, self.unet.dtype
        gray = torch.cat([working_gray(lum, size) for lum in luminance])  # (B, 3, h, w) in [0, 1]
        text_embeds = self._refined_embeddings(texts.prompts, texts.embeds).to(dtype)  # (B, L, d)
        use_cfg = guidance > 1.0
        if use_cfg and texts.embeds is None and texts.negative_embeds is None:  # equal texts: both branches equal
            use_cfg = any(c != n for c, n in zip(texts.prompts, texts.negatives, strict=True))
        uncond = self._refined_embeddings(texts.negatives, texts.negative_embeds).to(dtype) if use_cfg else None
        latent_shape = (self.unet.config.in_channels, size[0] // self.vae_scale_factor,
                        size[1] // self.vae_scale_factor)
        check_prediction_type(self.control, self.scheduler)
        noise = batch_noise(initial_noise(generators, latent_shape, device, dtype), initial)  # (B, 4, h/8, w/8)
        denoiser = ControlledDenoiser(self.control, self.unet)
        tensors = {"prompt_embeds": text_embeds, "negative_prompt_embeds": uncond, "condition_latents": gray}
        with self.progress_bar(total=steps) as bar:
            latents = sample(denoiser, self.scheduler, noise, gray.to(dtype), text_embeds, uncond,
                             num_inference_steps=steps, guidance_scale=guidance, generators=generators, eta=eta,
                             on_step=StepCallback(self, callback, callback_inputs, tensors, bar),
                             stop=lambda: self._interrupt)
        if return_latents:
            return latents
        decoded = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
        return ((decoded.float() + 1.0) / 2.0).clamp(0.0, 1.0)  # (B, 3, h, w)
