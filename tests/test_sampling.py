"""The DDIM + classifier-free-guidance sampler (pure functions) against diffusers' own SD pipeline loop."""

import torch
from diffusers import DDIMScheduler

from colordiff.models import ConcatUNet2DConditionModel
from colordiff.sampling import guided_noise_prediction, initial_noise, sample
from colordiff.testing import tiny_stable_diffusion


def _encode(sd, prompts):
    ids = sd.tokenizer(prompts, padding="max_length", max_length=sd.tokenizer.model_max_length, truncation=True,
                       return_tensors="pt").input_ids
    return sd.text_encoder(ids)[0]


def test_sample_equals_stable_diffusion_pipeline_for_untrained_colordiff():
    """An untrained ColorDiff U-Net is SD's; our sampler must then reproduce diffusers' SD loop (same noise)."""
    sd = tiny_stable_diffusion()
    sd.scheduler = DDIMScheduler.from_config(sd.scheduler.config)
    sd.set_progress_bar_config(disable=True)
    noise = initial_noise([torch.Generator().manual_seed(s) for s in (1, 2)], (4, 8, 8), "cpu", torch.float32)
    prompts = ["a red car", "green grass"]
    with torch.no_grad():
        reference = sd(prompt=prompts, latents=noise.clone(), num_inference_steps=5, guidance_scale=6.0,
                       negative_prompt=["", ""], output_type="latent").images
        unet = ConcatUNet2DConditionModel.from_unet(sd.unet).eval()
        ours = sample(unet, sd.scheduler, noise, torch.randn(2, 4, 8, 8), _encode(sd, prompts),
                           _encode(sd, ["", ""]), num_inference_steps=5, guidance_scale=6.0)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)
    assert (ours - noise).abs().mean() > 0.01  # it really denoised


def test_guidance_is_cfg_formula_with_condition_in_both_branches():
    sd = tiny_stable_diffusion()
    unet = ConcatUNet2DConditionModel.from_unet(sd.unet).eval()
    with torch.no_grad():
        unet.condition_fuse.weight[:, 4:] = 0.2  # make z_c matter
        z, z_c = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
        text, uncond = _encode(sd, ["a cat", "a dog"]), _encode(sd, ["", ""])
        t = torch.tensor(500)
        eps_c = unet(z, t, text, condition_latents=z_c).sample
        eps_u = unet(z, t, uncond, condition_latents=z_c).sample
        guided = guided_noise_prediction(unet, z, t, z_c, text, uncond, 3.0)
        unguided = guided_noise_prediction(unet, z, t, z_c, text, None, 3.0)
    torch.testing.assert_close(guided, eps_u + 3.0 * (eps_c - eps_u), rtol=0, atol=1e-5)
    torch.testing.assert_close(unguided, eps_c, rtol=0, atol=1e-6)


def test_sample_leaves_callers_scheduler_untouched_and_is_deterministic():
    sd = tiny_stable_diffusion()
    unet = ConcatUNet2DConditionModel.from_unet(sd.unet).eval()
    scheduler = DDIMScheduler.from_config(sd.scheduler.config)
    before = scheduler.timesteps.clone()
    noise, z_c, text = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8), _encode(sd, ["x"])
    steps = []
    with torch.no_grad():
        a = sample(unet, scheduler, noise, z_c, text, None, num_inference_steps=3,
                        on_step=lambda i, t, z: steps.append(i))
        b = sample(unet, scheduler, noise, z_c, text, None, num_inference_steps=3)
    assert torch.equal(scheduler.timesteps, before)
    assert torch.equal(a, b) and steps == [0, 1, 2]


def test_initial_noise_is_per_generator():
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    batch = initial_noise(gens([5, 7]), (4, 8, 8), "cpu", torch.float32)
    alone = initial_noise(gens([7]), (4, 8, 8), "cpu", torch.float32)
    assert torch.equal(batch[1], alone[0])
    assert not torch.equal(batch[0], batch[1])
