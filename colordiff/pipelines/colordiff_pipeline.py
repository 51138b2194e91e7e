"""ColorDiffPipeline: grayscale photo -> color photo with the ColorDiff model (paper 000, Fig. 2).

The semantic priors (Sec. 3.3) come from the generators the model folder records in semantic_priors.yaml, or are
passed in precomputed: category and caption make the text condition, instances drive segmentation guidance (Eq.4-5).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, SchedulerMixin, UNet2DConditionModel
from diffusers.pipelines.pipeline_utils import StableDiffusionMixin
from diffusers.utils import BaseOutput
from transformers import CLIPTextModel, CLIPTokenizer

from colordiff.images import ImageInput, Luminance, luminance_of, working_gray
from colordiff.models import ConcatUNet2DConditionModel, LuminanceAwareAutoencoderKL
from colordiff.pipelines.call_args import (
    StepCallback,
    batch_noise,
    per_image,
    per_image_embeds,
)
from colordiff.pipelines.conventions import ColorizationPipelineMixin, TextCondition
from colordiff.pipelines.recorded_priors import RecordsPriorGenerators, SafetensorsLoraLoaderMixin
from colordiff.sampling import (
    SegmentationGuidance,
    guidance_condition,
    guided_step_count,
    initial_noise,
    masks_to_latent_grid,
    sample,
)
from colordiff.schedulers import check_prediction_type
from colordiff.semantics.config import PriorsConfig
from colordiff.semantics.generators import PriorGenerators, resolve_prior_kinds
from colordiff.semantics.priors import ImagePriors, Instances, compose_prompt

PriorsInput = str | list[str] | list[ImagePriors] | list[dict] | None


@dataclass
class ColorDiffPipelineOutput(BaseOutput):
    images: list  # one per input, each at its input's size (PIL images, arrays or tensors per output_type)
    priors: list[ImagePriors] | None = None  # the semantic priors used for each image, when any were


class ColorDiffPipeline(RecordsPriorGenerators, ColorizationPipelineMixin, SafetensorsLoraLoaderMixin,
                        StableDiffusionMixin, DiffusionPipeline):
    """Luminance-guided Stable Diffusion colorization: concat U-Net (Eq.1) + luminance-aware decoder (Eq.6).

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
        """An untrained ColorDiff model from SD components (identity fuse conv, zero skip alphas: it *is* SD)."""
        return cls(
            vae=LuminanceAwareAutoencoderKL.from_vae(sd.vae),
            unet=ConcatUNet2DConditionModel.from_unet(sd.unet),
            text_encoder=sd.text_encoder,
            tokenizer=sd.tokenizer,
            scheduler=DDIMScheduler.from_config(sd.scheduler.config),
        )

    @classmethod
    def from_stable_diffusion(cls, base: str | Path, dtype=None, **kwargs) -> ColorDiffPipeline:
        """Assemble an untrained ColorDiff model from Stable Diffusion 1.5 weights: a hub id or a local folder.

        Only safetensors weights are read. `kwargs` go to every `from_pretrained` (e.g. `local_files_only=True`).
        """
        kwargs = {"use_safetensors": True, **kwargs}
        weights_dtype = {} if dtype is None else {"dtype": dtype}

        no_weights = {k: v for k, v in kwargs.items() if k != "use_safetensors"}  # tokenizer, scheduler
        parts = SimpleNamespace(  # the five components, named as in an SD pipeline folder
            unet=UNet2DConditionModel.from_pretrained(base, subfolder="unet", **weights_dtype, **kwargs),
            vae=AutoencoderKL.from_pretrained(base, subfolder="vae", **weights_dtype, **kwargs),
            text_encoder=CLIPTextModel.from_pretrained(base, subfolder="text_encoder", **weights_dtype, **kwargs),
            tokenizer=CLIPTokenizer.from_pretrained(base, subfolder="tokenizer", **no_weights),
            scheduler=DDIMScheduler.from_pretrained(base, subfolder="scheduler", **no_weights),
        )
        return cls.from_stable_diffusion_components(parts)

    # -- semantic priors (Sec. 3.3) --------------------------------------------------------------------------------
    def resolve_priors(self, priors: str | list[str] | None = "auto") -> tuple[str, ...]:
        """The prior kinds `priors` asks for ("auto", "none", "all", kinds); missing generators are an error."""
        available = () if self.prior_generators is None else self.prior_generators.available
        origin = f"model {getattr(self.config, '_name_or_path', None) or '(in memory)'}"
        return resolve_prior_kinds(priors, available, origin)

    def compute_priors(self, images: list[ImageInput], priors: str | list[str] | None = "auto") -> list[ImagePriors]:
        """Run the recorded generators `priors` asks for on the grayscale version of each image (as batches)."""
        kinds = self.resolve_priors(priors)
        if not kinds:
            return [ImagePriors() for _ in images]
        return self.prior_generators.compute(images, kinds, self._execution_device, self.unet.dtype)

    def prior_prompt(self, priors: ImagePriors) -> str:
        """The text condition from an image's category and caption, with the model's template (or the default)."""
        if self.prior_generators is not None:
            return self.prior_generators.prompt(priors)
        return compose_prompt(PriorsConfig().prompt_template, priors.category, priors.caption)

    # -- pieces ---------------------------------------------------------------------------------------------------
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

    # -- call -------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        images: ImageInput | list[ImageInput] | None = None,
        prompt: str | list[str] | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        generator: torch.Generator | list[torch.Generator] | None = None,
        resolution: int = 512,
        keep_luminance: bool = True,
        negative_prompt: str | list[str] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        priors: PriorsInput = "auto",
        seg_strength: float = 0.3,
        *,
        image: ImageInput | list[ImageInput] | None = None,
        num_images_per_prompt: int = 1,
        eta: float | None = None,
        latents: torch.Tensor | list[torch.Tensor] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
    ) -> ColorDiffPipelineOutput | tuple:
        """Colorize `images` (any sizes; color inputs are reduced to their luminance first).

        Args:
            images: a PIL image, an (H, W, 3) array or (3, H, W) tensor, a list of them, or a batch: a (B, 3, H, W)
                tensor or (B, H, W, 3) array. `image` is the same argument under diffusers' image-to-image name.
            prompt: one text condition for all images or one per image. None: the caption/category prompt when those
                priors are used, else "" (no text prior). A prompt replaces them (they are then not computed).
            guidance_scale: classifier-free guidance scale w; guidance is off for w <= 1 (as in diffusers).
            negative_prompt: the unconditional branch's text, one for all images or one per image ("" by default, as
                in training's conditioning dropout).
            generator: one generator per output (images x num_images_per_prompt) makes each result independent of
                the batch it is in; a single generator is shared.
            resolution: the model works at about resolution^2 pixels, aspect ratio kept; outputs have input sizes.
            keep_luminance: keep the input's exact L and take only a/b from the model (docs/colorize.md, "What
                `colorize` does").
            output_type: "pil", "np" (H, W, 3) float, "pt" (3, H, W) float, or "latent" (z_0, (4, h, w), not
                decoded). "np", "pt" and "latent" outputs are one stacked array / tensor when all outputs share a
                size, else a list.
            priors: which semantic priors to compute with the generators the model records: "auto" (all it
                records; none recorded = no priors), "none", "all", "caption", "category", "segmentation" or a list;
                or precomputed ones: one ImagePriors (or its dict form, e.g. a --save-priors sidecar) per image.
            seg_strength: s of segmentation guidance (Eq.4-5): the first ceil(T s) of T steps are guided; 0 = off.
            num_images_per_prompt: samples per input image; outputs are ordered image by image.
            eta: DDIM's eta (other schedulers that take one too); None: the scheduler's default (0 for DDIM).
            latents: initial noise, (N, 4, h, w) or a list of N (4, h, w) for N outputs, at each image's working
                latent size (scaled by the scheduler's init_noise_sigma, as in diffusers).
            prompt_embeds, negative_prompt_embeds: CLIP text embeddings (B or 1, L, d) instead of the texts.
            callback_on_step_end: `f(pipe, step, timestep, callback_kwargs) -> dict` after each step, with the tensors
                named in `callback_on_step_end_tensor_inputs` (of `_callback_tensor_inputs`); returned "latents"
                replace the batch's. Images of different working sizes run as separate batches, each with its own
                steps. Setting `pipe._interrupt = True` ends sampling (the latents so far are decoded).
        """
        images, generators, initial = self._start_call(
            images, image, output_type, prompt, prompt_embeds, negative_prompt, negative_prompt_embeds,
            callback_on_step_end_tensor_inputs, num_images_per_prompt, generator, latents, guidance_scale,
            num_inference_steps)
        count = len(images)

        device = self._execution_device  # color math runs there too: one upload per image, no round trips
        luminance = [luminance_of(im, device) for im in images]  # B x (1, 1, H, W), the only full-size tensors
        texts_given = prompt is not None or prompt_embeds is not None
        image_priors = self._priors_for([Luminance(lum) for lum in luminance], priors, text_needed=not texts_given)
        embeds = per_image_embeds(prompt_embeds, count, "prompt_embeds")
        if embeds is not None:
            prompts = [None] * count
        elif prompt is not None:
            prompts = per_image(prompt, count, "prompt")
        else:
            prompts = [self.prior_prompt(p) for p in image_priors] if image_priors else [""] * count
        negative_embeds = per_image_embeds(negative_prompt_embeds, count, "negative_prompt_embeds")
        negatives = [None] * count if negative_embeds else per_image(negative_prompt or "", count, "negative prompt")
        instances = [p.instances for p in image_priors] if image_priors else [None] * count
        if image_priors:  # record the text actually used, e.g. for --save-priors sidecars
            image_priors = [replace(p, extra={**p.extra, "prompt": text}) if text is not None else p
                            for p, text in zip(image_priors, prompts, strict=True)]
        _check_instances(instances, luminance)

        texts = TextCondition(prompts, embeds, negatives, negative_embeds)
        results = self._colorize_outputs(luminance, num_images_per_prompt, resolution, keep_luminance, output_type,
                                         lambda size, mine, indices: self._colorize_batch(
                                             [luminance[i] for i in mine], size, texts.take(mine),
                                             [generators[j] for j in indices], [initial[j] for j in indices],
                                             num_inference_steps, guidance_scale, [instances[i] for i in mine],
                                             seg_strength, eta, output_type == "latent", callback_on_step_end,
                                             callback_on_step_end_tensor_inputs))
        return ColorDiffPipelineOutput(images=results, priors=image_priors) if return_dict else (results,)

    def _priors_for(self, images, priors: PriorsInput, text_needed: bool) -> list[ImagePriors] | None:
        """Precomputed priors as given (checked), or the ones `priors` asks for computed now; None when none."""
        if isinstance(priors, list | tuple) and priors and isinstance(priors[0], ImagePriors | dict):
            if len(priors) != len(images):
                raise ValueError(f"got {len(priors)} precomputed priors for {len(images)} images")
            return [p if isinstance(p, ImagePriors) else ImagePriors.from_dict(p) for p in priors]
        kinds = self.resolve_priors(priors)
        if not text_needed:  # a given prompt replaces caption and category: do not compute them
            kinds = tuple(k for k in kinds if k == "segmentation")
        return self.prior_generators.compute(images, kinds, self._execution_device, self.unet.dtype) if kinds else None

    def _text_embeddings(self, texts: TextCondition, use_cfg: bool, dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, L, d) conditional embeddings, and the unconditional ones when classifier-free guidance runs."""
        def embed(strings, given):
            return torch.cat(given).to(self._execution_device) if given is not None else self.encode_prompt(strings)

        text_embeds = embed(texts.prompts, texts.embeds).to(dtype)  # (B, L, d)
        return text_embeds, embed(texts.negatives, texts.negative_embeds).to(dtype) if use_cfg else None

    def _colorize_batch(self, luminance, size, texts: TextCondition, generators, initial, steps, guidance, instances,
                        seg_strength, eta, return_latents, callback, callback_inputs):
        """Colorize images of one working size `size` as one batch; the decoded RGB (B, 3, h, w), or z_0."""
        device = self._execution_device
        gray = torch.cat([working_gray(lum, size) for lum in luminance])  # (B, 3, h, w)
        condition_latents, features = self.encode_gray(gray)  # (B, 4, h/8, w/8)
        dtype = self.unet.dtype

        segmentation = self._segmentation(instances, tuple(condition_latents.shape[-2:]), steps, seg_strength)
        labels = segmentation[1] if segmentation else []
        # a distilled (LCM) U-Net takes the guidance scale as an input instead of a second branch
        timestep_cond = guidance_condition(self.unet, guidance, len(generators), device, dtype)
        use_cfg = timestep_cond is None and guidance > 1.0
        if use_cfg and texts.embeds is None and texts.negative_embeds is None:
            # with every prompt (and instance label) equal to its image's negative prompt both branches are
            # identical: skip one (exact)
            owners_negatives = [texts.negatives[k] for k in segmentation[2].tolist()] if segmentation else []
            use_cfg = any(p != n for p, n in zip(texts.prompts, texts.negatives, strict=True)) or \
                any(label != n for label, n in zip(labels, owners_negatives, strict=True))
        text_embeds, uncond = self._text_embeddings(texts, use_cfg, dtype)  # (B, L, d) each
        guidance_inputs = None
        if segmentation:
            masks, labels, owners = segmentation
            label_embeds = self.encode_prompt(labels).to(dtype)  # (K, L, d): one text-encoder call for all labels
            guidance_inputs = SegmentationGuidance(masks.to(dtype), owners, label_embeds,
                                                   None if uncond is None else uncond[owners], seg_strength)

        check_prediction_type(self.unet, self.scheduler)
        drawn = initial_noise(generators, tuple(condition_latents.shape[1:]), device, dtype)  # (B, 4, h/8, w/8)
        noise = batch_noise(drawn, initial)
        tensors = {"prompt_embeds": text_embeds, "negative_prompt_embeds": uncond,
                   "condition_latents": condition_latents}
        with self.progress_bar(total=steps) as bar:
            latents = sample(
                self.unet, self.scheduler, noise, condition_latents.to(dtype), text_embeds, uncond,
                num_inference_steps=steps, guidance_scale=guidance, generators=generators, eta=eta,
                on_step=StepCallback(self, callback, callback_inputs, tensors, bar),
                segmentation=guidance_inputs, timestep_cond=timestep_cond, stop=lambda: self._interrupt,
            )
        return latents if return_latents else self.decode(latents, features)  # (B, 3, h, w)

    def _segmentation(self, instances: list[Instances | None], grid: tuple[int, int], steps: int, strength: float):
        """(masks (K, 1, h, w), labels, owners (K,)) of a batch on the latent grid, or None when nothing is guided.

        Masks empty on the grid are dropped (see masks_to_latent_grid for the resizing rule).
        """
        if guided_step_count(steps, strength) == 0 or not any(inst is not None and len(inst) for inst in instances):
            return None
        device = self._execution_device
        masks, labels, owners = [], [], []
        for index, inst in enumerate(instances):
            if inst is None or len(inst) == 0:
                continue
            on_grid = masks_to_latent_grid(inst.masks.to(device), grid)  # (k, 1, h, w)
            keep = on_grid.flatten(1).any(1).tolist()
            masks.append(on_grid[keep])
            labels += [label for label, kept in zip(inst.labels, keep, strict=True) if kept]
            owners += [index] * sum(keep)
        if not owners:
            return None
        return torch.cat(masks), labels, torch.tensor(owners, device=device)  # (K, 1, h, w), K labels, (K,)


def _check_instances(instances: list[Instances | None], luminance: list[torch.Tensor]) -> None:
    for index, (inst, lum) in enumerate(zip(instances, luminance, strict=True)):
        if inst is not None and tuple(inst.masks.shape[-2:]) != tuple(lum.shape[-2:]):
            raise ValueError(f"image {index}: instance masks are {tuple(inst.masks.shape[-2:])} but the image is "
                             f"{tuple(lum.shape[-2:])} (H, W)")
