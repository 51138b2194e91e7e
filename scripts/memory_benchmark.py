"""Peak memory of `colordiff colorize` against image size: the process's maximum RSS from /usr/bin/time -v.

Each case colorizes a folder of photos (a real photo enlarged to the case's size, as uncompressed TIFF so that the
check below sees the output's exact pixels) in a fresh process, and reports the peak RSS, the bytes per pixel of
the largest image above a small-image run's peak, and how far the output's Lab L is from the input's. Not a test:
it prints measured numbers, the last line one JSON object.

    python scripts/memory_benchmark.py                           # tiny random model, 8000x6000 and 12000x9000
    python scripts/memory_benchmark.py model=MODEL_DIR device=cuda
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from colordiff.color import rgb_to_luminance
from colordiff.config import load_config

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "photos"
Image.MAX_IMAGE_PIXELS = None  # the photos made here are large on purpose


@dataclass
class MemoryBenchmarkConfig:
    model: str | None = None  # a model folder; None: a tiny random one (memory beyond the model does not depend on it)
    photo: str = str(EXAMPLES / "kodim23.jpg")
    # each case: [width, height, number of such images in the folder]; the first, small one is the baseline
    cases: list[list[int]] = field(default_factory=lambda: [[512, 384, 1], [8000, 6000, 1], [12000, 9000, 1],
                                                            [8000, 6000, 2]])
    batch_size: int = 4
    steps: int = 2
    resolution: int = 512
    device: str = "cpu"
    extra: list[str] = field(default_factory=list)  # more `colordiff colorize` arguments (key=value overrides)


def peak_rss(command: list[str]) -> tuple[int, float]:
    """(max RSS in bytes, wall seconds) of a command run under /usr/bin/time -v."""
    run = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({run.returncode}):\n{run.stderr[-3000:]}")
    kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", run.stderr).group(1))
    clock = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", run.stderr).group(1)
    seconds = sum(float(part) * 60**k for k, part in enumerate(reversed(clock.split(":"))))
    return kb * 1024, seconds


def luminance(path: Path) -> torch.Tensor:
    rgb = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)  # (3, H, W) uint8
    rows = max(1, (1 << 20) // rgb.shape[-1])
    return torch.cat([rgb_to_luminance(rgb[:, r : r + rows].float()[None] / 255) for r in range(0, rgb.shape[1], rows)],
                     dim=-2)  # (1, 1, H, W)


def run(config: MemoryBenchmarkConfig, work: Path) -> dict:
    model = config.model
    if model is None:
        model = str(work / "tiny")
        subprocess.run([sys.executable, "-m", "colordiff.cli", "init-model", model, "--tiny"], check=True)
    source = Image.open(config.photo).convert("RGB")
    results = []
    for width, height, count in config.cases:
        folder, out = work / f"in_{width}x{height}x{count}", work / f"out_{width}x{height}x{count}"
        folder.mkdir()
        big = source.resize((width, height), Image.BICUBIC)
        for k in range(count):
            big.save(folder / f"photo{k}.tif")
        del big
        command = [sys.executable, "-m", "colordiff.cli", "colorize", str(folder), "-o", str(out), "--model", model,
                   "--steps", str(config.steps), "--resolution", str(config.resolution), "--batch-size",
                   str(config.batch_size), "--device", config.device, f"max_pixels={width * height + 1}",
                   *config.extra]
        rss, seconds = peak_rss(command)
        delta = (luminance(out / "photo0.tif") - luminance(folder / "photo0.tif")).abs()
        results.append({"width": width, "height": height, "images": count, "peak_rss_gb": round(rss / 1e9, 3),
                        "seconds": round(seconds, 1), "max_abs_delta_L": round(delta.max().item(), 4),
                        "mean_abs_delta_L": round(delta.mean().item(), 4)})
        for path in (*folder.iterdir(), *out.iterdir()):
            path.unlink()
        print(json.dumps(results[-1]), flush=True)
    base = results[0]["peak_rss_gb"] * 1e9
    for r in results[1:]:
        r["bytes_per_pixel_above_baseline"] = round((r["peak_rss_gb"] * 1e9 - base) / (r["width"] * r["height"]), 1)
        r["bound_gb"] = round((1.5e9 + 24 * r["width"] * r["height"]) / 1e9, 3)  # 1.5 GB + 24 B/px, largest image
    return {"host": platform.processor() or platform.machine(), "cpus": torch.get_num_threads(), "cases": results}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", default=[], help="YAML settings (repeatable)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of MemoryBenchmarkConfig")
    args = parser.parse_intermixed_args(argv)
    config = load_config(MemoryBenchmarkConfig, args.config, args.overrides)
    with tempfile.TemporaryDirectory(prefix="colordiff-memory-") as work:
        result = run(config, Path(work))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
