"""Seconds per image: ColorDiffPipeline vs diffusers' StableDiffusionImg2ImgPipeline (strength 1.0) as the baseline.

Both run the same U-Net size, steps, guidance (both CFG branches: a non-empty prompt), batch and dtype, in the same
process. Random weights: timing does not depend on them. Not a test: it prints measured numbers, the last line one
JSON object (the run with the worst ratio at top level, every run under "runs").

    python scripts/benchmark.py                                   # tiny models on the CPU
    python scripts/benchmark.py --config configs/benchmark/gpu.yaml  # SD1.5 sizes, bf16, 512^2, 50 steps
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
from colordiff.pipelines import ColorDiffPipeline
from colordiff.testing import sd15_shaped_stable_diffusion, tiny_stable_diffusion

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "photos"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class BenchmarkConfig:
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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_interleaved(fns, device, warmup: int, repeats: int) -> list[float]:
    """Median wall-clock seconds of each fn, their runs interleaved (A, B, A, B, ...) so that machine drift and
    thermal or frequency changes hit every candidate alike."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, bucket in zip(fns, times, strict=True):
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
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


def run(config: BenchmarkConfig) -> dict:
    device = torch.device("cuda" if config.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if config.device == "auto" else config.device))
    dtype = DTYPES[config.dtype]
    ours, baseline = build(config, device, dtype)
    runs = [measure(ours, baseline, config, batch, device) for batch in config.batch_sizes]
    worst = max(runs, key=lambda r: r["ratio"])
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or 'cpu'}"
    return {**worst, "device": str(device), "hardware": hardware, "threads": torch.get_num_threads(),
            "torch": torch.__version__, "config": asdict(config), "runs": runs}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", default=[], help="YAML settings (repeatable)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of BenchmarkConfig")
    args = parser.parse_args(argv)
    config = load_config(BenchmarkConfig, args.config, args.overrides)
    np.random.seed(0)
    result = run(config)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
