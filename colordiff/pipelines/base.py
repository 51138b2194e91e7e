"""The skeleton both pipelines share: `__call__` in numbered steps, the semantic priors, the text condition, batches
of one working size, and the denoising of one batch.

What differs between ColorDiff (paper 000) and SeAda (paper 001) is left to each class, in five small pieces:
`encode_condition` (what the denoiser and the decoder take from the gray image), `denoiser_model` and `denoiser`
(the network and the call `colordiff.sampling.sample` makes: the concat U-Net, or ControlNet + RCA around SD's
U-Net), `embed_texts` (CLIP, or the semantic adapter) and `decode` (the luminance-aware decoder, or SD's). Which
priors a pipeline uses is `prior_kinds`; segmentation guidance (000 Eq.4-5) runs only where it includes "segmentation".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from diffusers.utils import BaseOutput
from transformers import CLIPTextModel, CLIPTokenizer

from colordiff.images import ImageInput, Luminance, finish_image, luminance_of, working_gray, working_size
from colordiff.pipelines.call_args import (
    Batch,
    CallSettings,
    StepCallback,
    TextCondition,
    batch_noise,
    check_instances,
    check_output_type,
    check_texts_or_embeds,
    group_indices,
    input_images,
    output_generators,
    output_latents,
    per_image,
    per_image_embeds,
    repeat_each,
    stack_outputs,
    timestep_count,
)
from colordiff.pipelines.conventions import DiffusersConventionsMixin
from colordiff.sampling import (
    SegmentationGuidance,
    guidance_condition,
    guided_step_count,
    initial_noise,
    masks_to_latent_grid,
    sample,
)
from colordiff.schedulers import check_prediction_type
from colordiff.semantics.generators import resolve_prior_kinds
from colordiff.semantics.priors import PRIOR_KINDS, ImagePriors, Instances

PriorsInput = str | list[str] | list[ImagePriors] | list[dict] | None


@dataclass
class ColorDiffPipelineOutput(BaseOutput):
    images: list  # one per input, each at its input's size (PIL images, arrays or tensors per output_type)
    priors: list[ImagePriors] | None = None  # the semantic priors used for each image, when any were


def stable_diffusion_parts(base: str | Path, dtype=None, **kwargs) -> SimpleNamespace:
    """The five components of Stable Diffusion 1.5 weights (a hub id or a local folder), named as in an SD pipeline
    folder. Only safetensors weights are read; `kwargs` go to every `from_pretrained` (e.g. `local_files_only`)."""
    kwargs = {"use_safetensors": True, **kwargs}
    weights = {} if dtype is None else {"dtype": dtype}
    plain = {k: v for k, v in kwargs.items() if k != "use_safetensors"}  # tokenizer, scheduler
    return SimpleNamespace(
        unet=UNet2DConditionModel.from_pretrained(base, subfolder="unet", **weights, **kwargs),
        vae=AutoencoderKL.from_pretrained(base, subfolder="vae", **weights, **kwargs),
        text_encoder=CLIPTextModel.from_pretrained(base, subfolder="text_encoder", **weights, **kwargs),
        tokenizer=CLIPTokenizer.from_pretrained(base, subfolder="tokenizer", **plain),
        scheduler=DDIMScheduler.from_pretrained(base, subfolder="scheduler", **plain),
    )


class ColorizationPipeline(DiffusersConventionsMixin):
    """Mixed in before DiffusionPipeline: the call both pipelines share. Arguments of `__call__`:

    images: a PIL image, an (H, W, 3) array or (3, H, W) tensor, a list of them, or a batch: a (B, 3, H, W) tensor
        or (B, H, W, 3) array; any sizes, color inputs are reduced to their luminance. `image` is the same argument
        under diffusers' image-to-image name.
    prompt: one text condition for all images or one per image. None: the text of the priors (ColorDiff: category
        and caption; SeAda: the gray caption Des_g) when they are used, else "". A prompt replaces them (they are
        then not computed).
    guidance_scale: classifier-free guidance scale w; guidance is off for w <= 1 (as in diffusers).
    negative_prompt: the unconditional branch's text, one for all images or one per image ("" by default, as in
        training's conditioning dropout).
    generator: one generator per output (images x num_images_per_prompt) makes each result independent of the batch
        it is in; a single generator is shared.
    resolution: the model works at about resolution^2 pixels, aspect ratio kept; outputs have input sizes.
    keep_luminance: keep the input's exact L and take only a/b from the model (docs/colorize.md, "What `colorize`
        does").
    output_type: "pil", "np" (H, W, 3) float, "pt" (3, H, W) float, or "latent" (z_0, (4, h, w), not decoded).
        "np", "pt" and "latent" outputs are one stacked array / tensor when all outputs share a size, else a list.
    priors: which semantic priors to compute with the generators the model records: "auto" (all it records; none
        recorded = no priors), "none", "all", "caption", "category", "segmentation" or a list; or precomputed ones:
        one ImagePriors (or its dict form, e.g. a --save-priors sidecar) per image. SeAda uses the caption only.
    seg_strength: s of segmentation guidance (000 Eq.4-5): the first ceil(T s) of T steps are guided; 0 = off. SeAda has
        no segmentation guidance: it accepts the argument (for the shared CLI) and ignores it.
    num_images_per_prompt: samples per input image; outputs are ordered image by image.
    eta: DDIM's eta (other schedulers that take one too); None: the scheduler's default (0 for DDIM).
    latents: initial noise, (N, 4, h, w) or a list of N (4, h, w) for N outputs, at each image's working latent size
        (scaled by the scheduler's init_noise_sigma, as in diffusers).
    prompt_embeds, negative_prompt_embeds: text embeddings (B or 1, L, d) instead of the texts: CLIP's (ColorDiff),
        the adapter's refined e_r (SeAda).
    callback_on_step_end: `f(pipe, step, timestep, callback_kwargs) -> dict` after each step, with the tensors named
        in `callback_on_step_end_tensor_inputs` (of `_callback_tensor_inputs`); returned "latents" replace the
        batch's. Images of different working sizes run as separate batches, each with its own steps. Setting
        `pipe._interrupt = True` ends sampling (the latents so far are decoded).
    """

    prior_kinds: tuple[str, ...] = PRIOR_KINDS  # the semantic priors this pipeline conditions on

    # -- what each pipeline defines ----------------------------------------------------------------------------------
    def encode_condition(self, gray: torch.Tensor) -> tuple[torch.Tensor, object]:
        """Gray (B, 3, h, w) in [0, 1] -> (the denoiser's `condition_latents`, what `decode` needs besides z_0)."""
        raise NotImplementedError

    def denoiser(self) -> Callable:
        """`(z_t, t, text_embeds, condition_latents=...) -> .sample`: the call `colordiff.sampling.sample` makes."""
        raise NotImplementedError

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """Text embeddings (B, L, d) of `texts`, as the denoiser takes them."""
        raise NotImplementedError

    def decode(self, latents: torch.Tensor, decoder_input) -> torch.Tensor:
        """z_0 (B, 4, h/8, w/8) -> RGB (B, 3, h, w) in [0, 1]."""
        raise NotImplementedError

    def prior_prompt(self, priors: ImagePriors) -> str:
        """The text condition an image's priors give."""
        raise NotImplementedError

    # -- semantic priors (paper 000 Sec. 3.3; paper 001's gray caption) --------------------------------------------
    def resolve_priors(self, priors: str | list[str] | None = "auto") -> tuple[str, ...]:
        """The prior kinds `priors` asks for ("auto", "none", "all", kinds) among the ones this pipeline uses;
        missing generators, or asking for a kind the pipeline does not use, are errors."""
        available = () if self.prior_generators is None else self.prior_generators.available
        origin = f"model {getattr(self.config, '_name_or_path', None) or '(in memory)'}"
        kinds = resolve_prior_kinds(priors, available, origin)
        if priors not in (None, "auto") and any(k not in self.prior_kinds for k in kinds):
            method = type(self).__name__.removesuffix("Pipeline")
            raise ValueError(f"{method} conditions on the {' and '.join(self.prior_kinds)} prior only; cannot use "
                             f"priors {list(kinds)}")
        return tuple(k for k in kinds if k in self.prior_kinds)

    def compute_priors(self, images: list[ImageInput], priors: str | list[str] | None = "auto") -> list[ImagePriors]:
        """Run the recorded generators `priors` asks for on the grayscale version of each image (as batches)."""
        kinds = self.resolve_priors(priors)
        if not kinds:
            return [ImagePriors() for _ in images]
        return self.prior_generators.compute(images, kinds, self._execution_device, self.unet.dtype)

    # -- the call ---------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, images: ImageInput | list[ImageInput] | None = None, prompt: str | list[str] | None = None,
                 num_inference_steps: int = 50, guidance_scale: float = 7.5, generator=None, resolution: int = 512,
                 keep_luminance: bool = True, negative_prompt: str | list[str] | None = None, output_type: str = "pil",
                 return_dict: bool = True, priors: PriorsInput = "auto", seg_strength: float = 0.3, *, image=None,
                 num_images_per_prompt: int = 1, eta: float | None = None, latents=None,
                 prompt_embeds: torch.Tensor | None = None, negative_prompt_embeds: torch.Tensor | None = None,
                 callback_on_step_end: Callable | None = None,
                 callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",)) -> ColorDiffPipelineOutput | tuple:
        """Colorize `images`; each output has its input's size (the arguments: see the class docstring)."""
        # 1. Check inputs; set the call-time state; one generator and initial latents per output
        images = input_images(images, image)
        check_output_type(output_type)
        check_texts_or_embeds(prompt, prompt_embeds, negative_prompt, negative_prompt_embeds)
        StepCallback.check(callback_on_step_end_tensor_inputs, self._callback_tensor_inputs)
        if num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be >= 1, got {num_images_per_prompt}")
        self._guidance_scale, self._interrupt = guidance_scale, False
        self._num_timesteps = timestep_count(self.scheduler, num_inference_steps)
        generators = output_generators(generator, len(images) * num_images_per_prompt)
        initial = output_latents(latents, len(images) * num_images_per_prompt)
        # 2. The exact luminance of each image, on the device (color math runs there): the only full-size tensors
        luminance = [luminance_of(im, self._execution_device) for im in images]  # B x (1, 1, H, W)
        # 3. Semantic priors: given (precomputed), or computed now by the generators the model records
        text_given = prompt is not None or prompt_embeds is not None
        image_priors = self._priors_for([Luminance(L) for L in luminance], priors, text_given)
        # 4. The text condition of each image, and the priors as used (with that text, for --save-priors)
        texts = self._text_condition(len(images), prompt, prompt_embeds, negative_prompt, negative_prompt_embeds,
                                     image_priors)
        image_priors = self._priors_as_used(image_priors, texts.prompts)
        instances = [p.instances for p in image_priors] if image_priors else [None] * len(images)
        check_instances(instances, luminance)
        # 5. Denoise and decode, in batches of one working size
        settings = CallSettings(
            num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, eta=eta,
            seg_strength=seg_strength if "segmentation" in self.prior_kinds else 0.0, output_type=output_type,
            keep_luminance=keep_luminance, resolution=resolution, num_images_per_prompt=num_images_per_prompt,
            callback=callback_on_step_end, callback_tensor_inputs=callback_on_step_end_tensor_inputs)
        results = self._colorize_outputs(luminance, texts, instances, generators, initial, settings)
        # 6. Output
        return ColorDiffPipelineOutput(images=results, priors=image_priors) if return_dict else (results,)

    def _priors_for(self, images: list[Luminance], priors: PriorsInput, text_given: bool) -> list[ImagePriors] | None:
        """Precomputed priors as given (checked), or the ones `priors` asks for computed now; None when none. A
        given text replaces the caption and category, so only segmentation is then computed (if this pipeline
        uses it)."""
        if text_given and "segmentation" not in self.prior_kinds:
            return None
        if isinstance(priors, list | tuple) and priors and isinstance(priors[0], ImagePriors | dict):
            if len(priors) != len(images):
                raise ValueError(f"got {len(priors)} precomputed priors for {len(images)} images")
            return [p if isinstance(p, ImagePriors) else ImagePriors.from_dict(p) for p in priors]
        kinds = self.resolve_priors(priors)
        if text_given:  # a given prompt replaces caption and category: do not compute them
            kinds = tuple(k for k in kinds if k == "segmentation")
        return self.prior_generators.compute(images, kinds, self._execution_device, self.unet.dtype) if kinds else None

    def _text_condition(self, count: int, prompt, prompt_embeds, negative_prompt, negative_prompt_embeds,
                        image_priors: list[ImagePriors] | None) -> TextCondition:
        """Per image: prompt_embeds, else the prompt, else the text of its priors, else ""; and the negatives."""
        embeds = per_image_embeds(prompt_embeds, count, "prompt_embeds")
        if embeds is not None:
            prompts = [None] * count
        elif prompt is not None:
            prompts = per_image(prompt, count, "prompt")
        else:
            prompts = [self.prior_prompt(p) for p in image_priors] if image_priors else [""] * count
        negative_embeds = per_image_embeds(negative_prompt_embeds, count, "negative_prompt_embeds")
        negatives = [None] * count if negative_embeds else per_image(negative_prompt or "", count, "negative prompt")
        return TextCondition(prompts, embeds, negatives, negative_embeds)

    def _priors_as_used(self, image_priors: list[ImagePriors] | None, prompts: list[str | None]):
        """The kinds of each image's priors this pipeline uses, with the text actually used in extra["prompt"]."""
        if not image_priors:
            return image_priors
        kinds = self.prior_kinds
        return [replace(p, category=p.category if "category" in kinds else None,
                        instances=p.instances if "segmentation" in kinds else None,
                        extra={**p.extra, "prompt": text}) if text is not None else p
                for p, text in zip(image_priors, prompts, strict=True)]

    def _colorize_outputs(self, luminance: list, texts: TextCondition, instances: list, generators: list,
                          initial: list, settings: CallSettings) -> list:
        """Every output, made in batches of one working size (each image's outputs repeat it for several samples).
        Each image's full-size L is freed after its last output."""
        owner = repeat_each(list(range(len(luminance))), settings.num_images_per_prompt)  # output j: image owner[j]
        left = [settings.num_images_per_prompt] * len(luminance)  # outputs still to make of each image
        results: list = [None] * len(owner)
        sizes = [working_size(*luminance[i].shape[-2:], settings.resolution, self.size_multiple) for i in owner]
        for size, outputs in group_indices(sizes).items():  # outputs sharing a working size run as one batch
            mine = [owner[j] for j in outputs]
            batch = Batch(size=size, luminance=[luminance[i] for i in mine], texts=texts.take(mine),
                          instances=[instances[i] for i in mine], generators=[generators[j] for j in outputs],
                          initial=[initial[j] for j in outputs])
            colorized = self._colorize_batch(batch, settings)  # (b, 3, h, w) RGB, or (b, 4, h/8, w/8) latents
            del batch
            for j, i, out in zip(outputs, mine, colorized, strict=True):
                results[j] = out if settings.output_type == "latent" else finish_image(
                    luminance[i], out, settings.keep_luminance, settings.output_type)
                left[i] -= 1
                if left[i] == 0:
                    luminance[i] = None  # done with this image's full-size L
        self.maybe_free_model_hooks()
        return stack_outputs(results, settings.output_type)

    # -- one batch ----------------------------------------------------------------------------------------------------
    def _colorize_batch(self, batch: Batch, settings: CallSettings) -> torch.Tensor:
        """Colorize one batch of one working size: the decoded RGB (B, 3, h, w) in [0, 1], or z_0."""
        device, dtype = self._execution_device, self.unet.dtype
        h, w = batch.size
        # 1. The gray model input at the working size, and what the denoiser and the decoder take from it
        gray = torch.cat([working_gray(lum, batch.size) for lum in batch.luminance])  # (B, 3, h, w) in [0, 1]
        condition, decoder_input = self.encode_condition(gray)
        # 2. Guidance: instances on the latent grid (000 Eq.4-5); a distilled (LCM) model takes the scale as an input
        grid = (h // self.vae_scale_factor, w // self.vae_scale_factor)
        instances = _instances_on_grid(batch.instances, grid, settings, device)
        timestep_cond = guidance_condition(self.denoiser_model, settings.guidance_scale, len(batch.generators),
                                           device, dtype)
        # 3. Text embeddings, and the unconditional ones when classifier-free guidance runs
        use_cfg = _runs_both_branches(batch.texts, instances, settings.guidance_scale, timestep_cond)
        text_embeds, uncond = self._text_embeddings(batch.texts, use_cfg, dtype)  # (B, L, d) each
        segmentation = None
        if instances is not None:
            masks, labels, owners = instances
            label_embeds = self.embed_texts(labels).to(dtype)  # (K, L, d): one text-encoder call for all labels
            segmentation = SegmentationGuidance(masks.to(dtype), owners, label_embeds,
                                                None if uncond is None else uncond[owners], settings.seg_strength)
        # 4. Initial noise, one draw per output
        check_prediction_type(self.denoiser_model, self.scheduler)
        shape = (self.unet.config.in_channels, *grid)
        noise = batch_noise(initial_noise(batch.generators, shape, device, dtype), batch.initial)  # (B, 4, h/8, w/8)
        # 5. Denoising loop
        tensors = {"prompt_embeds": text_embeds, "negative_prompt_embeds": uncond, "condition_latents": condition}
        with self.progress_bar(total=settings.num_inference_steps) as bar:
            latents = sample(
                self.denoiser(), self.scheduler, noise, condition.to(dtype), text_embeds, uncond,
                num_inference_steps=settings.num_inference_steps, guidance_scale=settings.guidance_scale,
                generators=batch.generators, eta=settings.eta, segmentation=segmentation, timestep_cond=timestep_cond,
                on_step=StepCallback(self, settings.callback, settings.callback_tensor_inputs, tensors, bar),
                stop=lambda: self._interrupt)
        # 6. Decode
        return latents if settings.output_type == "latent" else self.decode(latents, decoder_input)

    def _text_embeddings(self, texts: TextCondition, use_cfg: bool, dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, L, d) conditional embeddings, and the unconditional ones when classifier-free guidance runs."""
        def embed(strings, given):
            return torch.cat(given).to(self._execution_device) if given is not None else self.embed_texts(strings)

        text_embeds = embed(texts.prompts, texts.embeds).to(dtype)  # (B, L, d)
        return text_embeds, embed(texts.negatives, texts.negative_embeds).to(dtype) if use_cfg else None


def _instances_on_grid(instances: list[Instances | None], grid: tuple[int, int], settings: CallSettings, device):
    """(masks (K, 1, h, w), labels, owners (K,)) of a batch on the latent grid, or None when nothing is guided.

    Masks empty on the grid are dropped (see masks_to_latent_grid for the resizing rule)."""
    if guided_step_count(settings.num_inference_steps, settings.seg_strength) == 0 or \
            not any(inst is not None and len(inst) for inst in instances):
        return None
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


def _runs_both_branches(texts: TextCondition, instances, guidance_scale: float, timestep_cond) -> bool:
    """Whether classifier-free guidance runs its unconditional branch: for scales above 1, unless the model takes the
    scale as an input, and unless every text (and instance label) equals its image's negative prompt, which makes
    both branches identical (skipping one is exact)."""
    if timestep_cond is not None or guidance_scale <= 1.0:
        return False
    if texts.embeds is not None or texts.negative_embeds is not None:
        return True
    labels, owners = ([], []) if instances is None else (instances[1], instances[2].tolist())
    pairs = [*zip(texts.prompts, texts.negatives, strict=True),
             *zip(labels, [texts.negatives[k] for k in owners], strict=True)]
    return any(text != negative for text, negative in pairs)
