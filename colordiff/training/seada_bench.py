"""SeAda timing next to diffusers' ControlNet at the same sizes (random weights: "tiny" or SD1.5-shaped "sd15").

- inference: seconds per image of SeAdaPipeline vs diffusers' StableDiffusionControlNetPipeline (DDIM, CFG).
- training: images/s of each SeAda stage's optimizer step (the real `SeAdaTask.loss`) vs a plain ControlNet
  training step (diffusers' train_controlnet.py: VAE-encode, noise, ControlNet + U-Net, MSE, AdamW).
The target is a ratio <= 1.15 (RCA is the only extra work). This module lives outside scripts/benchmark.py
because that file was being edited concurrently; `python -m colordiff.training.seada_bench [key=value ...]` runs it.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import ControlNetModel, DDIMScheduler, DDPMScheduler, StableDiffusionControlNetPipeline

from colordiff.config import load_config
from colordiff.devices import DTYPES
from colordiff.pipelines.seada_pipeline import SeAdaPipeline
from colordiff.testing import SD15_SCHEDULER_CONFIG, sd15_shaped_stable_diffusion, tiny_stable_diffusion
from colordiff.training.bench import _measure
from colordiff.training.seada import SeAdaTask, stage_plan


@dataclass
class SeAdaBenchConfig:
    model_size: str = "tiny"  # tiny | sd15
    device: str = "auto"
    dtype: str = "float32"  # float32 | bfloat16 | float16
    resolution: int = 64
    batch_size: int = 2
    steps: int = 4  # DDIM steps per inference call
    warmup: int = 1
    repeats: int = 3
    stages: tuple[int, ...] = (0, 1, 2, 3)


def _models(config: SeAdaBenchConfig, dtype: torch.dtype):
    sd = tiny_stable_diffusion() if config.model_size == "tiny" else sd15_shaped_stable_diffusion()
    seada = SeAdaPipeline.from_stable_diffusion_components(sd, rca_head_dim=8 if config.model_size == "tiny" else 64)
    baseline = StableDiffusionControlNetPipeline(
        vae=sd.vae, text_encoder=sd.text_encoder, tokenizer=sd.tokenizer, unet=sd.unet,
        controlnet=ControlNetModel.from_unet(sd.unet), scheduler=DDIMScheduler.from_config(SD15_SCHEDULER_CONFIG),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    for part in (seada.control, seada.adapter):  # make the zero-initialised parts do real work
        with torch.no_grad():
            for p in part.parameters():
                if p.ndim > 1 and not p.any():
                    p.normal_(0, 1e-3)
    return seada, baseline


def measure_inference(seada, baseline, config, device) -> dict:
    rng = np.random.default_rng(0)
    images = [rng.random((config.resolution, config.resolution, 3)).astype(np.float32)
              for _ in range(config.batch_size)]
    gray = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).mean(1, keepdim=True).expand(-1, 3, -1, -1)
    kwargs = {"num_inference_steps": config.steps, "output_type": "np"}

    def ours():
        seada(images, prompt="a photo", resolution=config.resolution, generator=torch.Generator().manual_seed(0),
              **kwargs)

    def theirs():
        baseline(["a photo"] * config.batch_size, image=gray.to(device), height=config.resolution,
                 width=config.resolution, generator=torch.Generator().manual_seed(0), **kwargs)

    ours_s = _measure(ours, device, config.warmup, config.repeats)["s_per_step"] / config.batch_size
    base_s = _measure(theirs, device, config.warmup, config.repeats)["s_per_step"] / config.batch_size
    return {"seada_s_per_image": ours_s, "controlnet_s_per_image": base_s, "ratio": ours_s / base_s}


def measure_training(seada, baseline, config, device, dtype) -> dict:
    g = torch.Generator().manual_seed(0)
    color = torch.rand(config.batch_size, 3, config.resolution, config.resolution, generator=g) * 2 - 1
    batch = {"pixel_values": color, "gray_values": color.mean(1, keepdim=True).expand(-1, 3, -1, -1).contiguous(),
             "text": ["a gray photo"] * config.batch_size, "text_color": ["a red photo"] * config.batch_size}
    scheduler = DDPMScheduler.from_config(SD15_SCHEDULER_CONFIG)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    results = {}
    for stage in config.stages:
        task = SimpleNamespace(  # the attributes SeAdaTask.loss / _set_trainable read
            config=SimpleNamespace(conditioning_dropout=0.05, reconstruction_target="e_g",
                                   timestep_bias_strategy="none", loss_weighting="none", gradient_checkpointing=False,
                                   lora_rank=0),
            accelerator=SimpleNamespace(device=device), pipe=seada, plan=stage_plan(stage), noise_scheduler=scheduler,
            lambda_r=1.0 if stage == 1 else 0.0, lambda_s=0.5 if stage == 1 else 1.0,
            weight_dtype=dtype)  # frozen parts in the mixed-precision dtype, as SeAdaTask (and train_controlnet.py)
        SeAdaTask._set_trainable(task)
        params = [p for m in (seada.adapter, seada.control) for p in m.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-5)

        def step(task=task, optimizer=optimizer):
            with autocast:
                loss = SeAdaTask.loss(task, {}, batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        results[f"stage{stage}_images_per_s"] = config.batch_size / _measure(step, device, config.warmup,
                                                                             config.repeats)["s_per_step"]
    controlnet = baseline.controlnet.to(device).train().requires_grad_(True)
    baseline.text_encoder.to(dtype=dtype)  # frozen, as the VAE and U-Net it shares with SeAda (cast above)
    optimizer = torch.optim.AdamW(controlnet.parameters(), lr=1e-5)

    def controlnet_step():
        with autocast:
            with torch.no_grad():
                latents = baseline.vae.encode(color.to(device)).latent_dist.sample() * 0.18215
                text = baseline.text_encoder(baseline.tokenizer(batch["text"], padding="max_length", max_length=77,
                                                                return_tensors="pt").input_ids.to(device))[0]
            noise = torch.randn_like(latents)
            t = torch.randint(0, 1000, (latents.shape[0],), device=device)
            noisy = scheduler.add_noise(latents, noise, t)
            down, mid = controlnet(noisy, t, text, controlnet_cond=(batch["gray_values"].to(device) + 1) / 2,
                                   return_dict=False)
            pred = baseline.unet(noisy, t, text, down_block_additional_residuals=down,
                                 mid_block_additional_residual=mid).sample
            loss = F.mse_loss(pred.float(), noise.float())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    results["controlnet_images_per_s"] = config.batch_size / _measure(controlnet_step, device, config.warmup,
                                                                      config.repeats)["s_per_step"]
    for stage in config.stages:
        results[f"stage{stage}_ratio_vs_controlnet"] = (results["controlnet_images_per_s"]
                                                        / results[f"stage{stage}_images_per_s"])
    return results


def run(config: SeAdaBenchConfig) -> dict:
    device = torch.device("cuda" if config.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if config.device == "auto" else config.device))
    dtype = DTYPES[config.dtype]
    seada, baseline = _models(config, dtype)
    seada.to(device)
    baseline.to(device)
    seada.set_progress_bar_config(disable=True)
    baseline.set_progress_bar_config(disable=True)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        inference = measure_inference(seada, baseline, config, device)
    training = measure_training(seada, baseline, config, device, dtype)
    return {"config": asdict(config), "device": str(device), "inference": inference, "training": training}


if __name__ == "__main__":
    print(json.dumps(run(load_config(SeAdaBenchConfig, [], sys.argv[1:])), indent=2))
