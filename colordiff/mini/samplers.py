"""`scripts/benchmark.py mode=samplers`: seconds per image and quality of each sampler on a trained model.

Every run colorizes the same held-out gray photos with the same seeds (one generator per photo, as colorize seeds
them) and is scored with `colordiff evaluate` against the ground truths (colorfulness and ΔCF, PSNR, mean |Δab|)
and against the DDIM-50 result of the same seed (mean |Δab| to it: how far a fast sampler moves the colors). The
time is the pipeline call alone (no file I/O, no model loading), after one warm-up call, best of `repeats`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from colordiff.devices import synchronize

# label, scheduler name (colordiff/schedulers.py), steps, which model ("model" or "distilled")
DEFAULT_RUNS = [["DDIM 50", "ddim", 50, "model"], ["DDIM 20", "ddim", 20, "model"],
                ["DPM-Solver++ 20", "dpmpp_2m", 20, "model"], ["DPM-Solver++ 10", "dpmpp_2m", 10, "model"],
                ["UniPC 10", "unipc", 10, "model"], ["LCM 4 (distilled)", "lcm", 4, "distilled"],
                ["LCM 2 (distilled)", "lcm", 2, "distilled"]]


@dataclass
class SamplersConfig:
    model: str = "outputs/mini/colordiff"  # the trained model (the miniature's by default)
    distilled: str | None = "outputs/mini/distill/model"  # its LCM-distilled folder (scripts/distill.py)
    photos: str = "outputs/mini/photos/gray"  # held-out gray inputs
    gt: str = "outputs/mini/photos/gt"  # their ground truths (same names)
    work_dir: str = "outputs/bench_samplers"  # the outputs of every run, and their scores
    runs: list[list] = field(default_factory=lambda: [list(r) for r in DEFAULT_RUNS])
    resolution: int = 160
    guidance_scale: float = 7.5
    seed: int = 0
    repeats: int = 2


def run_samplers(config: SamplersConfig, device: torch.device, dtype: torch.dtype) -> dict:
    from colordiff.colorize_jobs import sample_seed
    from colordiff.io import read_image, write_image
    from colordiff.mini.report import evaluate_folder
    from colordiff.pipelines import load_pipeline
    from colordiff.schedulers import make_scheduler

    names = sorted(p.name for p in Path(config.photos).iterdir() if p.suffix == ".png")
    images = [read_image(Path(config.photos) / n).rgb for n in names]
    work = Path(config.work_dir)
    pipes, rows, reference = {}, [], None
    for label, scheduler, steps, which in config.runs:
        source = config.model if which == "model" else config.distilled
        if source is None or not Path(source).exists():
            rows.append({"run": label, "skipped": f"no {which} folder ({source})"})
            continue
        if source not in pipes:
            pipes[source] = load_pipeline(source, local_files_only=True).to(device, dtype)
            pipes[source].set_progress_bar_config(disable=True)
        pipe = pipes[source]
        pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)

        def colorize(pipe=pipe, steps=steps):
            generators = [torch.Generator().manual_seed(sample_seed(config.seed, Path(n), 0)) for n in names]
            return pipe(images, num_inference_steps=steps, guidance_scale=config.guidance_scale,
                        generator=generators, resolution=config.resolution, output_type="np", priors="none").images

        colorize()  # warm-up
        seconds = []
        for _ in range(config.repeats):
            synchronize(device)
            start = time.perf_counter()
            outputs = colorize()
            synchronize(device)
            seconds.append((time.perf_counter() - start) / len(images))
        folder = work / label.split(" (")[0].replace(" ", "_").replace("+", "p").lower()
        for name, rgb in zip(names, outputs, strict=True):
            write_image(folder / name, np.asarray(rgb))
        evaluate_folder(folder, Path(config.gt), folder.with_suffix(".json"))
        scores = json.loads(folder.with_suffix(".json").read_text())
        row = {"run": label, "scheduler": scheduler, "steps": steps, "model": which,
               "seconds_per_image": round(min(seconds), 4), **_summary(scores)}
        if reference is None and scheduler == "ddim" and steps == 50:
            reference = folder
        if reference is not None:
            evaluate_folder(folder, reference, folder.with_name(folder.name + "_vs_ddim50.json"))
            moved = json.loads(folder.with_name(folder.name + "_vs_ddim50.json").read_text())
            row["delta_ab_to_ddim50"] = round(moved["delta_ab"], 3)
        rows.append(row)
    base = next((r for r in rows if r.get("run") == "DDIM 50"), None)
    for row in rows:
        if base is not None and "seconds_per_image" in row:
            row["speedup_vs_ddim50"] = round(base["seconds_per_image"] / row["seconds_per_image"], 2)
    return {"photos": len(images), "runs": rows, "config": config.__dict__}


def _summary(scores: dict) -> dict:
    keep = ("colorfulness", "delta_cf", "psnr", "delta_ab")
    return {k: round(scores[k], 3) for k in keep if k in scores}
