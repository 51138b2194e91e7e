"""Seconds per image: ColorDiffPipeline vs diffusers' StableDiffusionImg2ImgPipeline (strength 1.0) as the baseline.

Both run the same U-Net size, steps, guidance (both CFG branches: a non-empty prompt), batch and dtype, in the same
process. Random weights: timing does not depend on them. Not a test: it prints measured numbers, the last line one
JSON object (the run with the worst ratio at top level, every run under "runs").

    python scripts/benchmark.py                                   # tiny models on the CPU
    python scripts/benchmark.py --config configs/benchmark/gpu.yaml  # SD1.5 sizes, bf16, 512^2, 50 steps

`mode=train` measures training steps (images/s, peak memory): the U-Net step (with precomputed latents and with the
VAE on the fly) and the decoder step next to plain diffusers fine-tune steps (colordiff/training/bench.py);
`mode=seada` times SeAda against diffusers' ControlNet pipeline and training step (colordiff/training/seada_bench.py).
`mode=samplers` times and scores every sampler (DDIM 50 / 20, DPM-Solver++ 20 / 10, UniPC 10, the LCM-distilled
model at 4 / 2 steps) on a trained model's held-out photos, the miniature's by default (colordiff/mini/samplers.py):

    python scripts/benchmark.py --config configs/benchmark/samplers.yaml

`mode=guidance` measures segmentation guidance (000 Eq.4-5) instead: seconds per image with 0, 1, 3 and 8 instances at
s = 0.3, next to the U-Net FLOP ratio those counts imply, and the prior generators' images per second.

    python scripts/benchmark.py mode=guidance
    python scripts/benchmark.py --config configs/benchmark/gpu.yaml --config configs/benchmark/guidance.yaml
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline
from PIL import Image

from colordiff.config import load_config
from colordiff.devices import DTYPES, synchronize
from colordiff.mini.samplers import SamplersConfig, run_samplers
from colordiff.pipelines import ColorDiffPipeline
from colordiff.sampling import guided_step_count
from colordiff.semantics import ImagePriors, Instances
from colordiff.testing import sd15_shaped_stable_diffusion, tiny_stable_diffusion

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "photos"


@dataclass
class BenchmarkConfig:
    mode: str = "pipelines"  # pipelines: ours vs img2img | guidance: 000 Eq.4-5 cost and prior generators' images/s
    #                          | train: training steps vs a plain SD fine-tune | seada: SeAda vs diffusers' ControlNet
    model_size: str = "tiny"  # tiny | sd15 (random weights with SD1.5's architecture)
    device: str = "auto"  # auto: cuda if available
    dtype: str = "float32"
    resolution: int = 128
    steps: int = 20
    guidance_scale: float = 7.5
    batch_sizes: list[int] = field(default_factory=lambda: [1, 4])
    warmup: int = 1
    repeats: int = 5
    prompt: str = "a colorful photo"
    train_batch_size: int = 4  # mode=train and mode=seada: images per training step
    gradient_checkpointing: bool = False  # mode=train
    instance_counts: list[int] = field(default_factory=lambda: [0, 1, 3, 8])  # mode=guidance
    seg_strength: float = 0.3  # mode=guidance
    prior_images: int = 8  # mode=guidance: images per timed call of each prior generator
    samplers: SamplersConfig = field(default_factory=SamplersConfig)  # mode=samplers: model, photos, runs


def _time_interleaved(fns, device, warmup: int, repeats: int) -> list[float]:
    """Median wall-clock seconds of each fn, their runs interleaved (A, B, A, B, ...) so that machine drift and
    thermal or frequency changes hit every candidate alike."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, bucket in zip(fns, times, strict=True):
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            bucket.append(time.perf_counter() - start)
    return [statistics.median(bucket) for bucket in times]


def _inputs(batch: int, resolution: int) -> list[Image.Image]:
    photos = sorted(EXAMPLES.glob("*.jpg"))
    return [Image.open(photos[i % len(photos)]).convert("RGB").resize((resolution, resolution)) for i in range(batch)]


def build(config: BenchmarkConfig, device: torch.device, dtype: torch.dtype):
    sd = tiny_stable_diffusion() if config.model_size == "tiny" else sd15_shaped_stable_diffusion(dtype=dtype)
    sd.scheduler = DDIMScheduler.from_config(sd.scheduler.config)
    ours = ColorDiffPipeline.from_stable_diffusion_components(sd).to(device, dtype)
    baseline = StableDiffusionImg2ImgPipeline(**sd.components).to(device, dtype)
    for pipe in (ours, baseline):
        pipe.set_progress_bar_config(disable=True)
    return ours, baseline


def measure(ours, baseline, config: BenchmarkConfig, batch: int, device: torch.device) -> dict:
    """Seconds per image of both pipelines at one batch size."""
    images = _inputs(batch, config.resolution)
    prompts = [config.prompt] * batch

    def generators():
        return [torch.Generator().manual_seed(i) for i in range(batch)]

    def run_ours():
        ours(images, prompt=prompts, num_inference_steps=config.steps, guidance_scale=config.guidance_scale,
             generator=generators(), resolution=config.resolution, output_type="np")

    def run_baseline():
        baseline(prompt=prompts, image=images, strength=1.0, num_inference_steps=config.steps,
                 guidance_scale=config.guidance_scale, generator=generators(), output_type="np")

    ours_s, base_s = _time_interleaved([run_ours, run_baseline], device, config.warmup, config.repeats)
    print(f"batch {batch:3d}: ours {ours_s / batch:8.4f} s/img   img2img {base_s / batch:8.4f} s/img   "
          f"ratio {ours_s / base_s:.3f}", flush=True)
    return {"batch_size": batch, "ours_s_per_image": ours_s / batch, "baseline_s_per_image": base_s / batch,
            "ratio": ours_s / base_s}


def _instances(k: int, height: int, width: int) -> Instances:
    """k disjoint vertical stripes covering the image: every instance is non-empty on the latent grid."""
    masks = torch.zeros(k, height, width, dtype=torch.bool)
    for i in range(k):
        masks[i, :, i * width // k : (i + 1) * width // k] = True
    return Instances(masks, [f"object {i}" for i in range(k)], [1.0] * k)


def measure_guidance(config: BenchmarkConfig, device: torch.device, dtype: torch.dtype) -> list[dict]:
    """Seconds per image of the pipeline with k instances per image, and the U-Net FLOP ratio k implies.

    Per image, an unguided run evaluates the U-Net on T (x2 CFG) rows; guidance adds k rows in each of the
    ceil(T s) guided steps, so the FLOP ratio is (T + ceil(T s) k) / T. Text, VAE and colour work do not grow with k.
    """
    sd = tiny_stable_diffusion() if config.model_size == "tiny" else sd15_shaped_stable_diffusion(dtype=dtype)
    pipe = ColorDiffPipeline.from_stable_diffusion_components(sd).to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    batch = config.batch_sizes[0]
    images = _inputs(batch, config.resolution)

    def colorize(k: int):
        priors = [ImagePriors(instances=_instances(k, config.resolution, config.resolution)) for _ in images]
        pipe(images, prompt=config.prompt, num_inference_steps=config.steps, guidance_scale=config.guidance_scale,
             generator=[torch.Generator().manual_seed(i) for i in range(batch)], resolution=config.resolution,
             output_type="np", priors=priors, seg_strength=config.seg_strength)

    times = _time_interleaved([lambda k=k: colorize(k) for k in config.instance_counts], device, config.warmup,
                              config.repeats)
    steps, guided = config.steps, guided_step_count(config.steps, config.seg_strength)
    base = times[config.instance_counts.index(0)] if 0 in config.instance_counts else None
    runs = []
    for k, seconds in zip(config.instance_counts, times, strict=True):
        flops = (steps + guided * k) / steps
        run = {"instances": k, "s_per_image": seconds / batch, "unet_flop_ratio": flops}
        if base is not None:
            run.update(time_ratio=seconds / base, time_over_flop_ratio=seconds / base / flops)
        runs.append(run)
        print(f"{k} instances: {seconds / batch:8.4f} s/img   FLOP ratio {flops:.2f}"
              + (f"   time ratio {seconds / base:.2f}" if base else ""), flush=True)
    return runs


def measure_priors(config: BenchmarkConfig, device: torch.device, dtype: torch.dtype) -> dict:
    """Images per second of each prior generator on `prior_images` images (one batched call each)."""
    import tempfile

    from colordiff.semantics import PriorGenerators
    from colordiff.semantics.testing import paper_sized_generators, save_tiny_prior_generators

    images = _inputs(config.prior_images, config.resolution)
    if config.model_size == "tiny":
        folder = tempfile.TemporaryDirectory()
        save_tiny_prior_generators(folder.name)
        loaded = PriorGenerators.from_file(Path(folder.name) / "semantic_priors.yaml")
        generators = {kind: loaded.generator(kind, device, dtype) for kind in loaded.available}
        for generator in generators.values():
            generator.batch_size = config.prior_images
    else:
        generators = paper_sized_generators(device, dtype)
    seconds = _time_interleaved([lambda g=g: g(images) for g in generators.values()], device, config.warmup,
                                config.repeats)
    result = {name: len(images) / s for name, s in zip(generators, seconds, strict=True)}
    print("prior generators (images/s): " + ", ".join(f"{n} {v:.2f}" for n, v in result.items()), flush=True)
    return result


def run_guidance(config: BenchmarkConfig, device: torch.device, dtype: torch.dtype) -> dict:
    runs = measure_guidance(config, device, dtype)
    worst = max(runs, key=lambda r: r.get("time_over_flop_ratio", 0.0))
    return {**worst, "runs": runs, "prior_images_per_s": measure_priors(config, device, dtype)}


def run(config: BenchmarkConfig) -> dict:
    device = torch.device("cuda" if config.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if config.device == "auto" else config.device))
    dtype = DTYPES[config.dtype]
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or 'cpu'}"
    about = {"device": str(device), "hardware": hardware, "threads": torch.get_num_threads(),
             "torch": torch.__version__, "config": asdict(config)}
    if config.mode == "guidance":
        return {**run_guidance(config, device, dtype), **about}
    if config.mode == "samplers":
        return {**run_samplers(config.samplers, device, dtype), **about}
    if config.mode == "train":
        from colordiff.training.bench import run_training_benchmark

        return {**run_training_benchmark(config.model_size, device, dtype, config.train_batch_size, config.resolution,
                                         config.warmup, config.repeats, config.gradient_checkpointing), **about}
    if config.mode == "seada":
        from colordiff.training.seada_bench import SeAdaBenchConfig
        from colordiff.training.seada_bench import run as run_seada

        seada = SeAdaBenchConfig(model_size=config.model_size, device=str(device), dtype=config.dtype,
                                 resolution=config.resolution, batch_size=config.train_batch_size, steps=config.steps,
                                 warmup=config.warmup, repeats=config.repeats)
        return {**run_seada(seada), **about}
    if config.mode != "pipelines":
        raise ValueError(f"mode must be pipelines, guidance, train, seada or samplers; got {config.mode!r}")
    ours, baseline = build(config, device, dtype)
    runs = [measure(ours, baseline, config, batch, device) for batch in config.batch_sizes]
    worst = max(runs, key=lambda r: r["ratio"])
    return {**worst, **about, "runs": runs}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", default=[], help="YAML settings (repeatable)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of BenchmarkConfig")
    args = parser.parse_intermixed_args(argv)  # key=value overrides may come after flags
    config = load_config(BenchmarkConfig, args.config, args.overrides)
    np.random.seed(0)
    result = run(config)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
