"""The attributes diffusers pipelines expose, shared by ColorDiffPipeline and SeAdaPipeline.

`vae_scale_factor`, `image_processor`, `guidance_scale`, `do_classifier_free_guidance`, `num_timesteps`,
`interrupt`, `_callback_tensor_inputs` and the VAE switches `enable_vae_slicing` / `enable_vae_tiling`, as
StableDiffusionPipeline has them; diffusers' StableDiffusionMixin (enable_freeu / fuse_qkv_projections) is mixed in
beside this.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers.image_processor import VaeImageProcessor

from colordiff.images import finish_image, working_size
from colordiff.pipelines.call_args import (
    StepCallback,
    check_output_type,
    check_texts_or_embeds,
    group_indices,
    input_images,
    output_generators,
    output_latents,
    repeat_each,
    stack_outputs,
)


@dataclass
class TextCondition:
    """The texts of one batch, per image: prompts or their embeddings, negative prompts or theirs."""

    prompts: list[str | None]
    embeds: list[torch.Tensor] | None  # B x (1, L, d), given instead of prompts
    negatives: list[str | None]
    negative_embeds: list[torch.Tensor] | None  # B x (1, L, d), given instead of negative prompts

    def take(self, indices: list[int]) -> TextCondition:
        """The texts of images `indices` (in that order)."""
        def pick(items):
            return None if items is None else [items[i] for i in indices]

        return TextCondition(pick(self.prompts), pick(self.embeds), pick(self.negatives), pick(self.negative_embeds))


def timestep_count(scheduler, num_inference_steps: int) -> int:
    """How many model evaluations `num_inference_steps` makes with `scheduler` (len of its timesteps)."""
    solver = type(scheduler).from_config(scheduler.config)
    solver.set_timesteps(num_inference_steps)
    return len(solver.timesteps)


class ColorizationPipelineMixin:
    """Mixed in before DiffusionPipeline. Call-time values (`guidance_scale`, `num_timesteps`, `interrupt`) are those
    of the running or last call, as in diffusers."""

    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds", "condition_latents"]
    _guidance_scale: float = 7.5
    _num_timesteps: int | None = None
    _interrupt: bool = False

    @property
    def vae_scale_factor(self) -> int:
        """Image pixels per latent cell along a side (8 for SD1.5's VAE)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def size_multiple(self) -> int:
        """Model sides must be multiples of this: the VAE's downsampling times the U-Net's."""
        return self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    @property
    def image_processor(self) -> VaeImageProcessor:
        """diffusers' VaeImageProcessor for this VAE (e.g. `postprocess` of decoded tensors). The pipelines' own
        pre- and post-processing is Lab-based (colordiff.images): gray from the exact L, L kept on output."""
        processor = self.__dict__.get("_image_processor")
        if processor is None or processor.config.vae_scale_factor != self.vae_scale_factor:
            processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
            self.__dict__["_image_processor"] = processor
        return processor

    # -- the call's frame, shared by both pipelines ------------------------------------------------------------------
    def _start_call(self, images, image, output_type, prompt, prompt_embeds, negative_prompt, negative_prompt_embeds,
                    tensor_inputs, num_images_per_prompt, generator, latents, guidance_scale, steps):
        """Check a call's arguments and set its call-time state; returns (images, generators, initial latents), the
        last two one per output (images x num_images_per_prompt)."""
        images = input_images(images, image)
        check_output_type(output_type)
        check_texts_or_embeds(prompt, prompt_embeds, negative_prompt, negative_prompt_embeds)
        StepCallback.check(tensor_inputs, self._callback_tensor_inputs)
        if num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be >= 1, got {num_images_per_prompt}")
        outputs = len(images) * num_images_per_prompt
        self._guidance_scale, self._interrupt = guidance_scale, False
        self._num_timesteps = timestep_count(self.scheduler, steps)
        return images, output_generators(generator, outputs), output_latents(latents, outputs)

    def _colorize_outputs(self, luminance: list, num_images_per_prompt: int, resolution: int, keep_luminance: bool,
                          output_type: str, colorize_batch: Callable):
        """Every output, made in batches of one working size: `colorize_batch(size, images, outputs)` gets the
        indices of the batch's images (one per output, repeated for several samples) and of its outputs, and returns
        their decoded RGB (b, 3, h, w) or z_0. Each image's full-size L is freed after its last output."""
        owner = repeat_each(list(range(len(luminance))), num_images_per_prompt)  # output j colorizes image owner[j]
        left = [num_images_per_prompt] * len(luminance)  # outputs still to make of each image
        results: list = [None] * len(owner)
        sizes = [working_size(*luminance[i].shape[-2:], resolution, self.size_multiple) for i in owner]
        for size, indices in group_indices(sizes).items():  # outputs sharing a working size run as one batch
            mine = [owner[j] for j in indices]
            batch = colorize_batch(size, mine, indices)  # (b, 3, h, w) RGB, or (b, 4, h/8, w/8) latents
            for j, i, out in zip(indices, mine, batch, strict=True):
                results[j] = out if output_type == "latent" else finish_image(luminance[i], out, keep_luminance,
                                                                              output_type)
                left[i] -= 1
                if left[i] == 0:
                    luminance[i] = None  # done with this image's full-size L
        self.maybe_free_model_hooks()
        return stack_outputs(results, output_type)

    # the VAE memory switches diffusers pipelines used to carry (diffusers now points to pipe.vae.enable_*)
    def enable_vae_slicing(self) -> None:
        """Decode (and encode) a batch image by image: peak memory of one image."""
        self.vae.enable_slicing()

    def disable_vae_slicing(self) -> None:
        self.vae.disable_slicing()

    def enable_vae_tiling(self) -> None:
        """Decode in overlapping tiles blended at the seams (the luminance-aware decoder tiles its skips too)."""
        self.vae.enable_tiling()

    def disable_vae_tiling(self) -> None:
        self.vae.disable_tiling()

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        """Guidance runs for scales above 1 (diffusers' rule), unless the U-Net takes the scale as an input (LCM)."""
        distilled = getattr(self._denoiser_config, "time_cond_proj_dim", None) is not None
        return self._guidance_scale > 1 and not distilled

    @property
    def _denoiser_config(self):
        return self.unet.config

    @property
    def num_timesteps(self) -> int | None:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        return self._interrupt
