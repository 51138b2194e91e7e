"""Training losses of ColorDiff (paper 000): 000 Eq.2 for the U-Net, 000 Eq.7 for the luminance-aware decoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from safetensors.torch import load_file
from torch import nn


def diffusion_loss(unet, noise_scheduler: DDPMScheduler, latents: torch.Tensor, condition_latents: torch.Tensor,
                   text_embeds: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                   weighting: str = "none") -> torch.Tensor:
    """000 Eq.2: E || eps - eps_theta(z_t, t, z_c, c) ||^2 (the v target instead for v-prediction schedules).

    latents z (B, 4, h, w) of the color image, condition_latents z_c of the gray image, text_embeds c (B, L, d).
    """
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)  # z_t
    target = diffusion_target(noise_scheduler, latents, noise, timesteps)
    prediction = unet(noisy, timesteps, text_embeds, condition_latents=condition_latents).sample
    return weighted_mse(prediction, target, noise_scheduler, timesteps, weighting)


def weighted_mse(prediction: torch.Tensor, target: torch.Tensor, noise_scheduler: DDPMScheduler,
                 timesteps: torch.Tensor, weighting: str) -> torch.Tensor:
    """The mean squared error of predictions (B, ...) against their targets, each example weighted by `weighting`:
    "none" (both papers: plain MSE), or "snr_plus_one", the "SNR+1" weighting of Salimans & Ho 2022 (Sec. 4): an eps
    example counts (1 + SNR_t) / SNR_t = 1 / alpha_bar_t times, which makes it the squared error of the v its
    prediction implies (v - v_hat = (eps - eps_hat) / sqrt(alpha_bar_t)); a v prediction already has that weight.
    With eps, the plain loss gives a wrong color at high noise almost no weight (alpha_bar_t = 0.005 at SD1.5's last
    step), where the colors are decided; this one weighs it as the v target does, for a network that must keep
    predicting eps (SeAda's control model over a frozen eps U-Net)."""
    error = (prediction.float() - target.float()).pow(2).flatten(1).mean(dim=1)  # (B,)
    if weighting == "snr_plus_one" and noise_scheduler.config.prediction_type == "epsilon":
        error = error / noise_scheduler.alphas_cumprod.to(error.device)[timesteps]
    elif weighting not in ("none", "snr_plus_one"):
        raise ValueError(f"unknown loss weighting {weighting!r} (none or snr_plus_one)")
    return error.mean()


def diffusion_target(noise_scheduler: DDPMScheduler, latents: torch.Tensor, noise: torch.Tensor,
                     timesteps: torch.Tensor) -> torch.Tensor:
    """What the network learns to predict, per the scheduler's prediction type: eps, or for v-prediction
    v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) z (the only target still defined at zero terminal SNR)."""
    kind = noise_scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return noise_scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unsupported prediction_type {kind!r}")


def decoder_loss(decoded: torch.Tensor, target: torch.Tensor, perceptual: nn.Module | None,
                 perceptual_weight: float) -> torch.Tensor:
    """000 Eq.7: L = L_2 + lambda_p L_p, images (B, 3, H, W) in [-1, 1], L_p = LPIPS(VGG)."""
    loss = F.mse_loss(decoded.float(), target.float())
    if perceptual is not None and perceptual_weight > 0:
        loss = loss + perceptual_weight * perceptual(decoded.float(), target.float()).mean()
    return loss


def build_perceptual(weights: str) -> nn.Module:
    """LPIPS with a VGG16 trunk (000 Eq.7's perceptual loss), frozen.

    weights: "random" (tests: no file is read), "package" (lpips' calibrated linear layers shipped with the package
    plus torchvision's ImageNet VGG16, which torchvision downloads once when online), or a path to a safetensors
    file holding the whole LPIPS state dict (offline use; scripts/export_lpips.py writes one).
    """
    import lpips

    if weights == "package":
        model = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=False, verbose=False)
    else:
        model = lpips.LPIPS(net="vgg", pretrained=False, pnet_rand=True, verbose=False)
        if weights != "random":
            model.load_state_dict(load_file(weights), strict=True)
    return model.eval().requires_grad_(False)
