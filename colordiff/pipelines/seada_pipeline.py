"""SeAdaPipeline: grayscale photo -> color photo with SeAda (paper 001, Fig. 2 and Fig. 4).

Gray caption Des_g (a captioner the model records in semantic_priors.yaml, precomputed priors, or `prompt`) ->
semantic adapter (Eq.2-3) -> e_r -> controlled SD (conditional mapper on the grayscale image, ControlNet, RCA) with
classifier-free guidance (the unconditional branch is the adapter's e_r of the negative prompt, "" by default),
DDIM -> VAE decoder -> the input's exact luminance with the model's a/b, at the input's size.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, SchedulerMixin, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from colordiff.models.control import ControlledDenoiser, SeAdaControlModel
from colordiff.models.semantic_adapter import SemanticAdapter
from colordiff.pipelines.colordiff_pipeline import (
    ColorDiffPipelineOutput,
    _group_indices,
    _per_image,
    _per_image_generators,
)
from colordiff.pipelines.images import ImageInput, Luminance, finish_image, luminance_of, working_gray, working_size
from colordiff.pipelines.recorded_priors import RecordsPriorGenerators
from colordiff.sampling import initial_noise, sample
from colordiff.schedulers import check_prediction_type
from colordiff.semantics.generators import PriorGenerators, resolve_prior_kinds
from colordiff.semantics.priors import ImagePriors

SeAdaPipelineOutput = ColorDiffPipelineOutput  # images (+ the priors used)


class SeAdaPipeline(RecordsPriorGenerators, DiffusionPipeline):
    """SeAda inference: semantic adapter + controlled Stable Diffusion. Same call contract as ColorDiffPipeline."""

    model_cpu_offload_seq = "adapter->control->unet->vae"

    def __init__(self, vae: AutoencoderKL, unet: UNet2DConditionModel, control: SeAdaControlModel,
                 adapter: SemanticAdapter, tokenizer: CLIPTokenizer, scheduler: SchedulerMixin):
        super().__init__()
        if not isinstance(control, SeAdaControlModel):
            raise TypeError(f"control must be a SeAdaControlModel, got {type(control).__name__}")
        if not isinstance(adapter, SemanticAdapter):
            raise TypeError(f"adapter must be a SemanticAdapter, got {type(adapter).__name__}")
        self.register_modules(vae=vae, unet=unet, control=control, adapter=adapter, tokenizer=tokenizer,
                              scheduler=scheduler)
        self.prior_generators: PriorGenerators | None = None  # the captioner, from semantic_priors.yaml

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
            return _per_image(prompt, len(images), "prompt"), None
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
    def size_multiple(self) -> int:
        vae_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return vae_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Token ids (B, L), padded to the tokenizer's maximum length."""
        return self.tokenizer(texts, padding="max_length", max_length=self.tokenizer.model_max_length,
                              truncation=True, return_tensors="pt").input_ids

    def encode_captions(self, captions: list[str]) -> torch.Tensor:
        """Eq.2-3: gray captions -> refined embeddings e_r (B, L, d)."""
        return self.adapter(self.tokenize(captions)).e_r

    # -- call -------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, images, prompt: str | list[str] | None = None, num_inference_steps: int = 50,
                 guidance_scale: float = 7.5, generator=None, resolution: int = 512, keep_luminance: bool = True,
                 negative_prompt: str = "", output_type: str = "pil", return_dict: bool = True, priors="auto",
                 seg_strength: float = 0.0) -> ColorDiffPipelineOutput | tuple:
        """Colorize `images` (any sizes). `prompt` replaces the gray caption Des_g; `priors` as in ColorDiffPipeline
        (caption only). `seg_strength` is accepted for the shared CLI and ignored: SeAda has no segmentation guidance.
        """
        images = list(images) if isinstance(images, list | tuple) else [images]
        generators = _per_image_generators(generator, len(images))
        device = self._execution_device
        luminance = [luminance_of(im, device) for im in images]  # B x (1, 1, H, W), the only full-size tensors
        captions, image_priors = self.captions_for([Luminance(lum) for lum in luminance], priors, prompt)
        if image_priors:
            image_priors = [ImagePriors(caption=p.caption, extra={**p.extra, "prompt": c})
                            for p, c in zip(image_priors, captions, strict=True)]
        sizes = [working_size(*lum.shape[-2:], resolution, self.size_multiple) for lum in luminance]
        results: list = [None] * len(images)
        for size, indices in _group_indices(sizes).items():  # one batch per working size
            decoded = self._colorize_batch([luminance[i] for i in indices], size, [captions[i] for i in indices],
                                           negative_prompt, [generators[i] for i in indices], num_inference_steps,
                                           guidance_scale)  # (b, 3, h, w)
            for i, rgb in zip(indices, decoded, strict=True):
                results[i] = finish_image(luminance[i], rgb, keep_luminance, output_type)
                luminance[i] = None  # done with this image's full-size L
        self.maybe_free_model_hooks()
        return ColorDiffPipelineOutput(images=results, priors=image_priors) if return_dict else (results,)

    def _colorize_batch(self, luminance, size, captions, negative_prompt, generators, steps, guidance):
        """Colorize images of one working size `size` as one batch; returns the decoded RGB (B, 3, h, w)."""
        device, dtype = self._execution_device, self.unet.dtype
        gray = torch.cat([working_gray(lum, size) for lum in luminance])  # (B, 3, h, w) in [0, 1]
        text_embeds = self.encode_captions(captions).to(dtype)  # (B, L, d)
        use_cfg = guidance != 1.0 and any(c != negative_prompt for c in captions)  # else both branches are equal
        uncond = self.encode_captions([negative_prompt]).to(dtype).expand_as(text_embeds) if use_cfg else None
        latent_shape = (self.unet.config.in_channels, size[0] // self._vae_factor, size[1] // self._vae_factor)
        check_prediction_type(self.control, self.scheduler)
        noise = initial_noise(generators, latent_shape, device, dtype)  # (B, 4, h/8, w/8)
        denoiser = ControlledDenoiser(self.control, self.unet)
        with self.progress_bar(total=steps) as bar:
            latents = sample(denoiser, self.scheduler, noise, gray.to(dtype), text_embeds, uncond,
                             num_inference_steps=steps, guidance_scale=guidance, generators=generators,
                             on_step=lambda step, z: bar.update())
        decoded = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
        return ((decoded.float() + 1.0) / 2.0).clamp(0.0, 1.0)  # (B, 3, h, w)

    @property
    def _vae_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)
