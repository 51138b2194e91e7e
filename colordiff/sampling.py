"""Samplers as pure functions of (model, latents, timesteps, conditions).

ColorDiff's conditional diffusion model (000 Eq.3): z_{t-1} = CDM(z_t, t, z_c, c_t), run with any diffusers
scheduler (DDIM by default, as in the paper) and classifier-free guidance on the text. The grayscale latent z_c is
kept in both guidance branches: only the text is dropped for the unconditional branch, as in training
(conditioning dropout replaces the prompt with "").

Segmentation guidance (000 Eq.4-5): during the first steps each instance i also predicts its noise from its image's z_t,
the masked condition z_c * M^i and its label L^i; the image's noise prediction becomes the mask-weighted composite
of its own and its instances' (see `segmentation_composite`), and the scheduler takes one step. A DDIM step (eta 0)
is affine in the noise for a fixed z_t, so this equals the paper's composite of the z_{t-1} predictions; for other
schedulers it keeps one consistent solver history per image.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import SchedulerMixin


def initial_noise(generators: Sequence[torch.Generator], shape: tuple[int, ...], device, dtype) -> torch.Tensor:
    """One noise tensor per image, each from its own generator, so an image's result ignores batch size and order.

    Drawn in float32 on each generator's own device, as diffusers' randn_tensor draws: a CPU generator (what colorize
    passes, as diffusers recommends) gives the same noise on every device; a CUDA one draws on the GPU.
    """
    noise = [torch.randn(shape, generator=g, device=g.device, dtype=torch.float32) for g in generators]  # B x (4, h, w)
    return torch.stack(noise).to(device=device, dtype=dtype)  # (B, 4, h, w)


def guidance_embedding(guidance_scale: torch.Tensor, dim: int) -> torch.Tensor:
    """The guidance scale as a distilled (LCM) U-Net's `timestep_cond`: sinusoidal features (B, dim) of w = scale - 1,
    as diffusers' LatentConsistencyModelPipeline embeds it (its student was trained against eps_u + scale (eps_c -
    eps_u), i.e. eps_c + w (eps_c - eps_u))."""
    w = (guidance_scale.float() - 1.0) * 1000.0  # (B,)
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=w.device) * -(math.log(10000.0) / (half - 1)))
    emb = w[:, None] * freqs[None, :]  # (B, half)
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 == 1 else emb  # (B, dim)


def guidance_condition(unet, guidance_scale: float, batch: int, device, dtype) -> torch.Tensor | None:
    """`timestep_cond` (B, d) for a U-Net distilled with the guidance scale as input (its config's
    time_cond_proj_dim set), else None."""
    dim = getattr(unet.config, "time_cond_proj_dim", None)
    if dim is None:
        return None
    return guidance_embedding(torch.full((batch,), float(guidance_scale)), dim).to(device=device, dtype=dtype)


def guided_noise_prediction(
    unet: Callable,
    latents: torch.Tensor,
    timestep: torch.Tensor,
    condition_latents: torch.Tensor,
    text_embeds: torch.Tensor,
    uncond_embeds: torch.Tensor | None,
    guidance_scale: float,
    timestep_cond: torch.Tensor | None = None,
) -> torch.Tensor:
    """eps = eps_u + w (eps_c - eps_u) from ONE batched U-Net call; z_c is the same in both branches.

    `uncond_embeds=None` means no guidance (a single branch), e.g. when every prompt is empty and both branches
    would be identical, or for a distilled U-Net that takes the guidance scale as `timestep_cond` (B, d).
    """
    extra = {} if timestep_cond is None else {"timestep_cond": timestep_cond}
    if uncond_embeds is None:
        return unet(latents, timestep, text_embeds, condition_latents=condition_latents, **extra).sample
    if timestep_cond is not None:
        extra = {"timestep_cond": torch.cat([timestep_cond, timestep_cond])}
    eps = unet(
        torch.cat([latents, latents]),  # (2B, 4, h, w)
        timestep,
        torch.cat([uncond_embeds, text_embeds]),  # (2B, L, d)
        condition_latents=torch.cat([condition_latents, condition_latents]),
        **extra,
    ).sample
    eps_uncond, eps_text = eps.chunk(2)
    return eps_uncond + guidance_scale * (eps_text - eps_uncond)


def sample(
    unet: Callable,
    scheduler: SchedulerMixin,
    noise: torch.Tensor,
    condition_latents: torch.Tensor,
    text_embeds: torch.Tensor,
    uncond_embeds: torch.Tensor | None,
    num_inference_steps: int = 50,
    guidance_scale: float = 7.5,
    generators: Sequence[torch.Generator] | None = None,
    eta: float | None = None,
    on_step: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor | None] | None = None,
    segmentation: SegmentationGuidance | None = None,
    timestep_cond: torch.Tensor | None = None,
    stop: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """Run `scheduler`'s sampler from `noise` (B, 4, h, w) to z_0 (000 Eq.3 at every step); returns (B, 4, h, w).

    The scheduler is copied (`from_config`), so the caller's object is never mutated and the function stays pure; the
    copy's own set_timesteps / init_noise_sigma / scale_model_input / step drive the loop. Schedulers whose step
    draws noise (DDPM, Euler a, LCM, TCD, DDIM with eta > 0) draw it from `generators`, one per image, so a result
    depends only on its image's seed. `eta` goes to schedulers that take one (None: the scheduler's default; DDIM's
    is 0, deterministic). With `segmentation`, the first `guided_step_count(steps, strength)` steps are 000 Eq.4-5
    steps.

    `on_step(step, t, latents)` runs after each step; a tensor it returns replaces the latents (as diffusers'
    callback_on_step_end may). `stop()` is asked before each step; True ends the loop there (diffusers' `interrupt`):
    the latents reached so far are returned.
    """
    solver = type(scheduler).from_config(scheduler.config)
    solver.set_timesteps(num_inference_steps, device=noise.device)
    accepted = inspect.signature(solver.step).parameters
    step_kwargs = {}
    if eta is not None and "eta" in accepted:
        step_kwargs["eta"] = eta
    if generators is not None and "generator" in accepted:
        step_kwargs["generator"] = list(generators)
    latents = noise * solver.init_noise_sigma
    timesteps = solver.timesteps
    guided = 0 if segmentation is None else guided_step_count(len(timesteps), segmentation.strength)
    for step, t in enumerate(timesteps):
        if stop is not None and stop():
            break
        model_input = solver.scale_model_input(latents, t)
        if step < guided and len(segmentation.owners) > 0:
            eps = segmentation_noise_prediction(unet, t, model_input, condition_latents, text_embeds, uncond_embeds,
                                                guidance_scale, segmentation, timestep_cond)
        else:
            eps = guided_noise_prediction(unet, model_input, t, condition_latents, text_embeds, uncond_embeds,
                                          guidance_scale, timestep_cond)
        latents = solver.step(eps, t, latents, **step_kwargs).prev_sample
        if on_step is not None:
            replaced = on_step(step, t, latents)
            if replaced is not None:
                if replaced.shape != latents.shape:
                    raise ValueError(f"a step callback returned latents {tuple(replaced.shape)} for "
                                     f"{tuple(latents.shape)}")
                latents = replaced.to(device=latents.device, dtype=latents.dtype)
    return latents


# -- segmentation guidance, 000 Eq.4-5 -----------------------------------------------------------------------------
@dataclass(frozen=True)
class SegmentationGuidance:
    """The instances of a batch for 000 Eq.4-5, already on the latent grid; K may be 0."""

    masks: torch.Tensor  # (K, 1, h, w) in {0, 1}: M^i, see `masks_to_latent_grid`
    owners: torch.Tensor  # (K,) long: the batch index of the image each instance belongs to
    text_embeds: torch.Tensor  # (K, L, d): the CLIP embedding of each instance's label L^i
    uncond_embeds: torch.Tensor | None  # (K, L, d) negative-prompt embeddings; None: no CFG for the instances
    strength: float = 0.3  # s in [0, 1]; paper 000 uses 0.3

    def __post_init__(self):
        k = self.owners.shape[0]
        if self.masks.ndim != 4 or self.masks.shape[:2] != (k, 1) or self.text_embeds.shape[0] != k:
            raise ValueError(f"segmentation guidance needs (K, 1, h, w) masks and K embeddings for K = {k} owners, "
                             f"got masks {tuple(self.masks.shape)} and embeddings {tuple(self.text_embeds.shape)}")
        if not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"segmentation strength must be in [0, 1], got {self.strength}")


def guided_step_count(num_inference_steps: int, strength: float) -> int:
    """How many of T DDIM steps are guided: those with t > T (1 - s), counting t = T, T-1, ..., 1 (paper 000, 3.3).

    Step k (0-based) has t = T - k, so it is guided iff k < T s: ceil(T s) steps (15 of 50 at s = 0.3). T s is
    rounded to 9 decimals first so that float noise (50 * 0.3 = 15.000000000000002) does not add a step.
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"segmentation strength must be in [0, 1], got {strength}")
    return min(num_inference_steps, math.ceil(round(num_inference_steps * strength, 9)))


def masks_to_latent_grid(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Binary image masks (K, H, W) -> latent-grid masks M^i (K, 1, h, w) in {0, 1}, by the any-pixel rule.

    A latent cell belongs to an instance when any pixel of the image area it covers does (adaptive max pooling).
    Thin objects (a pole, a railing: narrower than the 8 px a latent cell spans) would vanish under nearest or
    majority-area resizing; this rule keeps them, at the price of growing masks by at most one cell at their border.
    """
    if masks.ndim != 3:
        raise ValueError(f"masks must be (K, H, W), got {tuple(masks.shape)}")
    if masks.shape[0] == 0:
        return masks.new_zeros((0, 1, *size), dtype=torch.float32)
    return F.adaptive_max_pool2d(masks[:, None].float(), size)  # (K, 1, h, w)


def segmentation_composite(
    latents: torch.Tensor, instance_latents: torch.Tensor, masks: torch.Tensor, owners: torch.Tensor,
    eps: float = 1e-6,
) -> torch.Tensor:
    """000 Eq.5, corrected: z_hat = z (1 - M_any) + M_any * sum_i z^i M^i / max(sum_i M^i, eps), per image; applied to
    the noise predictions (see the module docstring), z stands for either.

    As printed, 000 Eq.5 sums k full latents [z (1 - M^i) + z^i M^i], which scales z by k outside the masks. The
    intended blend keeps the image's own z_{t-1} outside every mask, takes z^i_{t-1} inside instance i's mask, and
    averages the instances where masks overlap. M_any is the union (max) of an image's masks.
    latents (B, 4, h, w); instance_latents (K, 4, h, w); masks (K, 1, h, w); owners (K,) -> (B, 4, h, w).
    """
    batch = latents.shape[0]
    grid = (batch, 1, *latents.shape[-2:])
    weighted = torch.zeros_like(latents).index_add_(0, owners, instance_latents * masks)  # sum_i z^i M^i
    coverage = latents.new_zeros(grid).index_add_(0, owners, masks.to(latents.dtype))  # sum_i M^i
    index = owners.view(-1, 1, 1, 1).expand(masks.shape)  # (K, 1, h, w)
    union = latents.new_zeros(grid).scatter_reduce_(0, index, masks.to(latents.dtype), "amax")  # M_any
    return latents * (1 - union) + union * weighted / coverage.clamp_min(eps)


def segmentation_noise_prediction(
    unet: Callable,
    t: torch.Tensor,
    latents: torch.Tensor,
    condition_latents: torch.Tensor,
    text_embeds: torch.Tensor,
    uncond_embeds: torch.Tensor | None,
    guidance_scale: float,
    segmentation: SegmentationGuidance,
    timestep_cond: torch.Tensor | None = None,
) -> torch.Tensor:
    """000 Eq.4-5 in noise space: the images and all their instances, both CFG branches, in ONE U-Net call, composited
    per image into one noise prediction (B, 4, h, w) for the scheduler's step.

    Instance i starts from its image's z_t, sees the masked condition z_c * M^i and its label's embedding (000 Eq.4).
    Where only one side has CFG, the other side's text stands in for its missing unconditional branch: identical
    branches make eps_u + w (eps_c - eps_u) = eps_c, so that side is unguided as it would be alone.
    """
    owners, masks = segmentation.owners, segmentation.masks
    z = torch.cat([latents, latents[owners]])  # (B + K, 4, h, w)
    z_c = torch.cat([condition_latents, condition_latents[owners] * masks.to(condition_latents.dtype)])
    text = torch.cat([text_embeds, segmentation.text_embeds])  # (B + K, L, d)
    uncond = None
    if uncond_embeds is not None or segmentation.uncond_embeds is not None:
        uncond = torch.cat([text_embeds if uncond_embeds is None else uncond_embeds,
                            segmentation.text_embeds if segmentation.uncond_embeds is None
                            else segmentation.uncond_embeds])
    cond = None if timestep_cond is None else torch.cat([timestep_cond, timestep_cond[owners]])
    eps = guided_noise_prediction(unet, z, t, z_c, text, uncond, guidance_scale, cond)  # 2 (B + K) rows, one call
    batch = latents.shape[0]
    return segmentation_composite(eps[:batch], eps[batch:], masks.to(eps.dtype), owners)
