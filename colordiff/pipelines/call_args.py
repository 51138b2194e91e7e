"""What both pipelines' `__call__` do with their arguments before and after sampling, in diffusers' conventions.

Images (one, a list, or a batched (B, 3, H, W) tensor / (B, H, W, 3) array; `image=` as diffusers' image-to-image
pipelines name it), per-image texts and embeddings, `num_images_per_prompt` copies, one generator and optional
initial latents per output, the `callback_on_step_end` protocol, and stacking the outputs; and the records a call
hands from step to step (TextCondition, CallSettings, Batch).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch

from colordiff.images import ImageInput, Luminance
from colordiff.semantics.priors import Instances

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


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


@dataclass(frozen=True)
class CallSettings:
    """What every batch of one call is sampled and returned with."""

    num_inference_steps: int
    guidance_scale: float
    seg_strength: float  # s of 000 Eq.4-5; 0 for a pipeline without segmentation guidance
    eta: float | None
    output_type: str
    keep_luminance: bool
    resolution: int
    num_images_per_prompt: int
    callback: Callable | None
    callback_tensor_inputs: Sequence[str]


@dataclass
class Batch:
    """The outputs of one call that share a working size, colorized together; one entry per output."""

    size: tuple[int, int]  # (h, w): the model's input size
    luminance: list[torch.Tensor]  # b x (1, 1, H, W): the exact L of each output's image
    texts: TextCondition
    instances: list[Instances | None]
    generators: list[torch.Generator]
    initial: list[torch.Tensor | None]  # b x (C, h/8, w/8) latents given by the caller, or None: drawn


def input_images(images, image) -> list[ImageInput]:
    """The images of a call as a list: `images` or its alias `image` (not both); a 4-D tensor (B, C, H, W) or array
    (B, H, W, C) is B images."""
    if images is not None and image is not None:
        raise ValueError("pass the images as `images` or as `image`, not both")
    given = image if images is None else images
    if given is None:
        raise ValueError("no images given: pass `images` (or `image`)")
    if isinstance(given, torch.Tensor | np.ndarray) and given.ndim == 4:
        return list(given)  # B x (C, H, W) tensors or (H, W, C) arrays
    if isinstance(given, list | tuple):
        if not given:
            raise ValueError("got an empty list of images")
        return list(given)
    if isinstance(given, PIL.Image.Image | torch.Tensor | np.ndarray | Luminance):
        return [given]
    raise TypeError(f"unsupported image type {type(given).__name__}; pass PIL images, arrays or tensors")


def per_image(value: str | Sequence[str], count: int, name: str) -> list[str]:
    """One text per image: a string for all, or a list of exactly `count`."""
    if isinstance(value, str):
        return [value] * count
    if len(value) != count:
        raise ValueError(f"got {len(value)} {name}s for {count} images")
    return list(value)


def per_image_embeds(embeds: torch.Tensor | None, count: int, name: str) -> list[torch.Tensor] | None:
    """(B, L, d) or (1, L, d) text embeddings -> B x (1, L, d)."""
    if embeds is None:
        return None
    if embeds.ndim != 3 or embeds.shape[0] not in (1, count):
        raise ValueError(f"{name} must be (1, L, d) or ({count}, L, d) for {count} images, got {tuple(embeds.shape)}")
    return [embeds[i if embeds.shape[0] > 1 else 0][None] for i in range(count)]


def check_texts_or_embeds(prompt, prompt_embeds, negative_prompt, negative_prompt_embeds) -> None:
    if prompt is not None and prompt_embeds is not None:
        raise ValueError("pass `prompt` or `prompt_embeds`, not both")
    if negative_prompt is not None and negative_prompt_embeds is not None:
        raise ValueError("pass `negative_prompt` or `negative_prompt_embeds`, not both")
    if prompt_embeds is not None and negative_prompt_embeds is not None \
            and prompt_embeds.shape[1:] != negative_prompt_embeds.shape[1:]:
        raise ValueError(f"prompt_embeds {tuple(prompt_embeds.shape)} and negative_prompt_embeds "
                         f"{tuple(negative_prompt_embeds.shape)} must have the same (L, d)")


def repeat_each(items: list, times: int) -> list:
    """[a, b] -> [a, a, b, b] for times = 2: output j belongs to input j // times."""
    return [item for item in items for _ in range(times)]


def output_generators(generator, count: int) -> list[torch.Generator]:
    """One generator per output; a single generator is shared (results then depend on the order)."""
    if isinstance(generator, list | tuple):
        if len(generator) != count:
            raise ValueError(f"got {len(generator)} generators for {count} outputs (images x num_images_per_prompt)")
        return list(generator)
    if generator is None:
        generator = torch.Generator("cpu").manual_seed(torch.seed())
    return [generator] * count


def output_latents(latents, count: int) -> list[torch.Tensor | None]:
    """User initial noise: a (N, 4, h, w) tensor or a list of N (4, h, w) tensors, N = outputs; None: drawn."""
    if latents is None:
        return [None] * count
    if isinstance(latents, torch.Tensor):
        if latents.ndim != 4 or latents.shape[0] != count:
            raise ValueError(f"latents must be ({count}, C, h, w) for {count} outputs, got {tuple(latents.shape)}")
        return list(latents)
    if len(latents) != count:
        raise ValueError(f"got {len(latents)} latents for {count} outputs")
    return [z[0] if z.ndim == 4 else z for z in latents]


def group_indices(keys: list) -> dict:
    """{key: [indices of the items with that key]}, keys in first-seen order."""
    groups = defaultdict(list)
    for i, key in enumerate(keys):
        groups[key].append(i)
    return groups


def batch_noise(drawn: torch.Tensor, given: list[torch.Tensor | None]) -> torch.Tensor:
    """The initial noise of a batch: each given latent (checked against the drawn shape) in place of the drawn one."""
    if all(z is None for z in given):
        return drawn
    rows = []
    for z, row in zip(given, drawn, strict=True):
        if z is None:
            rows.append(row)
            continue
        if tuple(z.shape) != tuple(row.shape):
            raise ValueError(f"latents of shape {tuple(z.shape)} given where this image's working size needs "
                             f"{tuple(row.shape)} (C, h, w)")
        rows.append(z.to(device=row.device, dtype=row.dtype))
    return torch.stack(rows)  # (B, C, h, w)


def stack_outputs(results: list, output_type: str):
    """"np" / "pt" / "latent": one stacked batch when all outputs share a shape (diffusers' layout), else the list."""
    if output_type == "pil" or not results:
        return results
    if len({tuple(r.shape) for r in results}) > 1:
        return results
    return np.stack(results) if output_type == "np" else torch.stack(results)


def check_output_type(output_type: str) -> None:
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {', '.join(map(repr, OUTPUT_TYPES))}, got {output_type!r}")


class StepCallback:
    """diffusers' `callback_on_step_end(pipe, step, timestep, callback_kwargs) -> dict` for one batch.

    callback_kwargs holds the tensors named in `tensor_inputs` (of the pipeline's `_callback_tensor_inputs`); of what
    the callback returns, "latents" replaces the batch's latents; the other tensors are read-only (returning a
    different tensor for one of them is an error, never silently dropped). Progress bar updates ride along.
    """

    def __init__(self, pipe, callback: Callable | None, tensor_inputs: Sequence[str], tensors: dict,
                 bar=None):
        self.pipe, self.callback, self.tensor_inputs = pipe, callback, tensor_inputs
        self.tensors, self.bar = tensors, bar

    @staticmethod
    def check(tensor_inputs: Sequence[str], allowed: Sequence[str]) -> None:
        unknown = [name for name in tensor_inputs if name not in allowed]
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs {unknown} are not available; choose from "
                             f"{list(allowed)}")

    def __call__(self, step: int, t: torch.Tensor, latents: torch.Tensor) -> torch.Tensor | None:
        if self.bar is not None:
            self.bar.update()
        if self.callback is None:
            return None
        given = {name: latents if name == "latents" else self.tensors[name] for name in self.tensor_inputs}
        returned = self.callback(self.pipe, step, t, dict(given)) or {}
        for name, value in returned.items():
            if name != "latents" and name in given and value is not given[name]:
                raise ValueError(f"callback_on_step_end returned a new {name!r}; only 'latents' can be replaced")
        return returned.get("latents")


def timestep_count(scheduler, num_inference_steps: int) -> int:
    """How many model evaluations `num_inference_steps` makes with `scheduler` (len of its timesteps)."""
    solver = type(scheduler).from_config(scheduler.config)
    solver.set_timesteps(num_inference_steps)
    return len(solver.timesteps)


def check_instances(instances: list[Instances | None], luminance: list[torch.Tensor]) -> None:
    """Each image's instance masks (K, H, W) have the image's size."""
    for index, (inst, lum) in enumerate(zip(instances, luminance, strict=True)):
        if inst is not None and tuple(inst.masks.shape[-2:]) != tuple(lum.shape[-2:]):
            raise ValueError(f"image {index}: instance masks are {tuple(inst.masks.shape[-2:])} but the image is "
                             f"{tuple(lum.shape[-2:])} (H, W)")
