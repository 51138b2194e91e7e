"""Training-step throughput: ColorDiff's U-Net (000 Eq.2) and decoder (000 Eq.7) steps next to plain diffusers
fine-tunes.

A step is the full optimizer step of the training scripts (frozen encoders, loss, backward, AdamW update), built from
the same functions the trainers call (`encode_moments`, `diffusion_loss`, `decoder_loss`), on random weights with
SD1.5's architecture ("sd15") or the tiny test models ("tiny"). The baselines are the plain text-to-image fine-tune
step of diffusers' train_text_to_image.py (VAE-encode the image, noise, U-Net, MSE) and a plain VAE-decoder
fine-tune step (decode, L2 + LPIPS).
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

from colordiff.devices import synchronize
from colordiff.latents import encode_moments
from colordiff.models import ConcatUNet2DConditionModel, LuminanceAwareAutoencoderKL
from colordiff.testing import SD15_SCHEDULER_CONFIG, sd15_shaped_stable_diffusion, tiny_stable_diffusion
from colordiff.training.losses import build_perceptual, decoder_loss, diffusion_loss


def _measure(step, device, warmup: int, repeats: int) -> dict:
    """Median seconds per step and the peak accelerator memory (GiB, CUDA only) of `step()`."""
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"s_per_step": statistics.median(times), "peak_memory_gib": peak}


def _optimizer_step(loss, optimizer):
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def training_steps(model_size: str, device: torch.device, dtype: torch.dtype, batch: int, resolution: int,
                   gradient_checkpointing: bool = False):
    """{name: step function} for our U-Net step (precomputed latents and on-the-fly), the SD fine-tune baseline,
    our decoder step and the plain decoder baseline, all at the same sizes."""
    sd = tiny_stable_diffusion() if model_size == "tiny" else sd15_shaped_stable_diffusion()
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    unet_steps, color, gray = _unet_steps(sd, device, dtype, autocast, batch, resolution, gradient_checkpointing)
    return {**unet_steps, **_decoder_steps(sd, device, autocast, color, gray)}


def _unet_steps(sd, device, dtype, autocast, batch: int, resolution: int, gradient_checkpointing: bool):
    """Our U-Net step (000 Eq.2; precomputed latents and on the fly) and the SD fine-tune baseline; and the random color
    batch (B, 3, H, W) in [-1, 1] with its gray version, which the decoder steps share."""
    scheduler = DDPMScheduler.from_config(SD15_SCHEDULER_CONFIG)  # ignores the DDIM-only keys
    vae = LuminanceAwareAutoencoderKL.from_vae(sd.vae).to(device, dtype).requires_grad_(False).eval()
    text_encoder = sd.text_encoder.to(device, dtype).requires_grad_(False)
    ids = sd.tokenizer(["a photo"] * batch, padding="max_length", max_length=sd.tokenizer.model_max_length,
                       return_tensors="pt").input_ids.to(device)
    ours = ConcatUNet2DConditionModel.from_unet(sd.unet).to(device).train()
    base = sd.unet.to(device).train()
    for unet in (ours, base):
        if gradient_checkpointing:
            unet.enable_gradient_checkpointing()
    opt_ours, opt_base = (torch.optim.AdamW(m.parameters(), lr=1e-5) for m in (ours, base))
    color = torch.rand(batch, 3, resolution, resolution, device=device, dtype=dtype) * 2 - 1
    gray = color.mean(1, keepdim=True).expand_as(color).contiguous()
    with torch.no_grad():
        moments, gray_latents = encode_moments(vae, color, gray)  # what a latent cache holds
    scale = vae.config.scaling_factor

    def timesteps():
        return torch.randint(0, 1000, (batch,), device=device)

    def unet_step(precomputed: bool):
        with torch.no_grad():
            m, g = (moments, gray_latents) if precomputed else encode_moments(vae, color, gray)
            latents = DiagonalGaussianDistribution(m.float()).sample() * scale
            text = text_encoder(ids)[0].float()
        with autocast:
            loss = diffusion_loss(ours, scheduler, latents, g.float() * scale, text, torch.randn_like(latents),
                                  timesteps())
        _optimizer_step(loss, opt_ours)

    def baseline_step():
        with torch.no_grad():
            latents = vae.encode(color).latent_dist.sample().float() * scale
            text = text_encoder(ids)[0].float()
        noise = torch.randn_like(latents)
        t = timesteps()
        with autocast:
            prediction = base(scheduler.add_noise(latents, noise, t), t, text).sample
            loss = F.mse_loss(prediction.float(), noise)
        _optimizer_step(loss, opt_base)

    steps = {"unet_precomputed": lambda: unet_step(True), "unet_vae_on_the_fly": lambda: unet_step(False),
             "baseline_sd_finetune": baseline_step}
    return steps, color, gray


def _decoder_steps(sd, device, autocast, color: torch.Tensor, gray: torch.Tensor) -> dict:
    """Our decoder step (000 Eq.7, skips from the gray image's encoder features) and the plain decoder fine-tune."""
    batch = color.shape[0]
    decoder_vae = LuminanceAwareAutoencoderKL.from_vae(sd.vae).to(device)
    decoder_vae.requires_grad_(False)
    trainable = [*decoder_vae.decoder.parameters(), *decoder_vae.post_quant_conv.parameters(),
                 *decoder_vae.luminance_parameters()]
    for p in trainable:
        p.requires_grad_(True)
    opt_decoder = torch.optim.AdamW(trainable, lr=1e-4)
    perceptual = build_perceptual("random").to(device)

    def decoder_step(skips: bool):
        with torch.no_grad(), autocast:
            posterior, features = decoder_vae.encode_with_features(torch.cat([color, gray]))
            latents = posterior.sample()[:batch]
            features = [f[batch:] for f in features]
        with autocast:
            decoded = (decoder_vae.decode_with_features(latents, features) if skips
                       else decoder_vae.decode_without_skips(latents).sample)
            loss = decoder_loss(decoded, color, perceptual, 0.1)
        _optimizer_step(loss, opt_decoder)

    return {"decoder": lambda: decoder_step(True), "baseline_decoder_finetune": lambda: decoder_step(False)}


def run_training_benchmark(model_size: str, device: torch.device, dtype: torch.dtype, batch: int, resolution: int,
                           warmup: int, repeats: int, gradient_checkpointing: bool = False) -> dict:
    """images/s and peak memory of each step; the U-Net ratio compares the precomputed-latents step to the baseline."""
    steps = training_steps(model_size, device, dtype, batch, resolution, gradient_checkpointing)
    results = {}
    for name, step in steps.items():
        measured = _measure(step, device, warmup, repeats)
        results[name] = {**measured, "images_per_s": batch / measured["s_per_step"]}
        peak = measured["peak_memory_gib"]
        print(f"{name:28s} {results[name]['images_per_s']:9.2f} img/s   "
              f"{'-' if peak is None else f'{peak:.2f} GiB peak'}", flush=True)
    ours, base = results["unet_precomputed"]["images_per_s"], results["baseline_sd_finetune"]["images_per_s"]
    return {"train_unet_images_per_s": ours, "train_baseline_images_per_s": base,
            "train_ratio": base / ours, "train_steps": results}
