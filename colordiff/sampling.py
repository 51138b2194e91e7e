"""Samplers as pure functions of (model, latents, timesteps, conditions).

ColorDiff's conditional diffusion model (paper 000, Eq.3): z_{t-1} = CDM(z_t, t, z_c, c_t), run with DDIM and
classifier-free guidance on the text. The grayscale latent z_c is kept in both guidance branches: only the text is
dropped for the unconditional branch, as in training (conditioning dropout replaces the prompt with "").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from diffusers import DDIMScheduler, SchedulerMixin


def initial_noise(generators: Sequence[torch.Generator], shape: tuple[int, ...], device, dtype) -> torch.Tensor:
    """One noise tensor per image, each from its own generator, so an image's result ignores batch size and order.

    Drawn on the CPU in float32 (as diffusers recommends) so that a seed gives the same noise on every device.
    """
    noise = [torch.randn(shape, generator=g, dtype=torch.float32) for g in generators]  # B x (4, h, w)
    return torch.stack(noise).to(device=device, dtype=dtype)  # (B, 4, h, w)


def guided_noise_prediction(
    unet: Callable,
    latents: torch.Tensor,
    timestep: torch.Tensor,
    condition_latents: torch.Tensor,
    text_embeds: torch.Tensor,
    uncond_embeds: torch.Tensor | None,
    guidance_scale: float,
) -> torch.Tensor:
    """eps = eps_u + w (eps_c - eps_u) from ONE batched U-Net call; z_c is the same in both branches.

    `uncond_embeds=None` means no guidance (a single branch), e.g. when every prompt is empty and both branches
    would be identical.
    """
    if uncond_embeds is None:
        return unet(latents, timestep, text_embeds, condition_latents=condition_latents).sample
    eps = unet(
        torch.cat([latents, latents]),  # (2B, 4, h, w)
        timestep,
        torch.cat([uncond_embeds, text_embeds]),  # (2B, L, d)
        condition_latents=torch.cat([condition_latents, condition_latents]),
    ).sample
    eps_uncond, eps_text = eps.chunk(2)
    return eps_uncond + guidance_scale * (eps_text - eps_uncond)


def ddim_sample(
    unet: Callable,
    scheduler: SchedulerMixin,
    noise: torch.Tensor,
    condition_latents: torch.Tensor,
    text_embeds: torch.Tensor,
    uncond_embeds: torch.Tensor | None,
    num_inference_steps: int = 50,
    guidance_scale: float = 7.5,
    eta: float = 0.0,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Run DDIM from `noise` (B, 4, h, w) to z_0 (Eq.3 at every step); returns the clean latents (B, 4, h, w).

    `scheduler` only supplies the configuration: a private DDIMScheduler is built from it, so the caller's object is
    never mutated and the function stays pure. With eta = 0 the trajectory is deterministic given the noise.
    """
    ddim = DDIMScheduler.from_config(scheduler.config)
    ddim.set_timesteps(num_inference_steps, device=noise.device)
    latents = noise * ddim.init_noise_sigma
    for step, t in enumerate(ddim.timesteps):
        eps = guided_noise_prediction(unet, latents, t, condition_latents, text_embeds, uncond_embeds, guidance_scale)
        latents = ddim.step(eps, t, latents, eta=eta).prev_sample
        if on_step is not None:
            on_step(step, latents)
    return latents
