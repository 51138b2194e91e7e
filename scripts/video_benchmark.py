"""Frames per second and temporal warping error of `colordiff colorize-video`: per-frame colorizing
(temporal=none) vs keyframes + optical flow (temporal=flow), on a camera pan generated from a real photo.

    python scripts/video_benchmark.py                                   # configs/benchmark/video.yaml
    python scripts/video_benchmark.py model=models/mini seconds=4       # any model folder, a shorter clip

With memory=true it also runs a short and a long clip (memory_seconds) in processes of their own and prints each
one's peak RSS: streaming keeps it flat in the clip's length. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from colordiff.cli import main as colordiff
from colordiff.config import load_config
from colordiff.video.config import EvalVideoConfig
from colordiff.video.evaluate import evaluate_video
from colordiff.video.synthetic import camera_frames, write_clip

REPO = Path(__file__).resolve().parents[1]
MEMORY_CHILD = """
import resource, sys
from colordiff.cli import main
code = main(sys.argv[1:])
print(code, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@dataclass
class VideoBenchmarkConfig:
    photo: str = str(REPO / "examples" / "photos" / "kodim05.jpg")
    seconds: float = 10.0
    fps: int = 25
    width: int = 854
    height: int = 480
    model: str | None = None  # None: a tiny random model in work_dir
    work_dir: str = "outputs/video_benchmark"
    steps: int = 10
    resolution: int = 256
    keyframe_interval: int = 16
    speed: bool = True  # the per-frame vs flow rows
    memory: bool = True
    memory_seconds: list[float] = field(default_factory=lambda: [20.0, 120.0])
    memory_width: int = 320
    memory_height: int = 180


def pan_clip(config: VideoBenchmarkConfig, path: Path, seconds: float, size: tuple[int, int]) -> Path:
    if not path.exists():
        photo = np.asarray(Image.open(config.photo).convert("RGB"))
        write_clip(path, camera_frames(photo, size, round(seconds * config.fps), "pan"), rate=config.fps,
                   options={"crf": "18"})
    return path


def colorize_args(config, clip: Path, out: Path, model: str, temporal: str) -> list[str]:
    return ["colorize-video", str(clip), "-o", str(out), "--model", model, "--temporal", temporal, "--overwrite",
            "--steps", str(config.steps), "--resolution", str(config.resolution), "--keyframe-interval",
            str(config.keyframe_interval), "--device", "cpu"]


def main(args: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", default=[], help="YAML settings (repeatable)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of VideoBenchmarkConfig")
    parsed = parser.parse_args(args)
    config = load_config(VideoBenchmarkConfig, parsed.config, parsed.overrides)
    work = Path(config.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    model = config.model
    if model is None:
        model = str(work / "tiny")
        if not Path(model).exists():
            colordiff(["init-model", model, "--tiny"])
    result = {"model": config.model or "tiny random (init-model --tiny)", "config": asdict(config),
              "machine": platform.processor() or platform.machine()}
    if config.speed:
        result.update(speed(config, work, model))
    if config.memory:
        result["peak_rss_mb"] = memory(config, work, model)
    print(json.dumps(result))
    return result


def speed(config: VideoBenchmarkConfig, work: Path, model: str) -> dict:
    """frames/s and warping error of temporal=none and temporal=flow on the pan clip."""
    clip = pan_clip(config, work / f"pan_{config.height}p_{config.seconds:g}s.mp4", config.seconds,
                    (config.width, config.height))
    frames = round(config.seconds * config.fps)
    rows = {}
    for temporal in ("none", "flow"):
        out = work / temporal
        start = time.perf_counter()
        assert colordiff(colorize_args(config, clip, out, model, temporal)) == 0
        seconds = time.perf_counter() - start
        error = evaluate_video(EvalVideoConfig(pred=str(out / clip.name)))
        rows[temporal] = {"frames_per_s": frames / seconds, "seconds": seconds,
                          "warp_error_ab": error["warp_error_ab"], "warp_error_rgb": error["warp_error_rgb"]}
        print(f"{temporal:>5}: {rows[temporal]['frames_per_s']:.2f} frames/s, warping error (ab) "
              f"{error['warp_error_ab']:.2f}, (rgb) {error['warp_error_rgb']:.5f}", flush=True)
    result = {"clip": f"{config.width}x{config.height}, {config.seconds:g} s at {config.fps} fps, {frames} frames",
              "rows": rows, "speedup": rows["flow"]["frames_per_s"] / rows["none"]["frames_per_s"],
              "warp_error_ratio": rows["flow"]["warp_error_ab"] / rows["none"]["warp_error_ab"]}
    print(f"flow / per-frame: {result['speedup']:.2f}x the frames/s, {result['warp_error_ratio']:.3f}x the "
          f"warping error (goal: >= 3x, <= 0.333x)", flush=True)
    return result


def memory(config: VideoBenchmarkConfig, work: Path, model: str) -> dict:
    """Peak RSS (MB) of temporal=flow runs on a short and a long clip, each in a process of its own."""
    peaks = {}
    for seconds in config.memory_seconds:
        long_clip = pan_clip(config, work / f"pan_{config.memory_height}p_{seconds:g}s.mp4", seconds,
                             (config.memory_width, config.memory_height))
        argv = colorize_args(config, long_clip, work / "memory", model, "flow")
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", MEMORY_CHILD, *argv], capture_output=True, text=True, check=True)
        code, rss_kb = done.stdout.split()[-2:]
        assert code == "0", done.stderr[-2000:]
        peaks[f"{seconds:g}s"] = int(rss_kb) / 1024
        print(f"peak RSS, {config.memory_width}x{config.memory_height} {seconds:g} s clip "
              f"({round(seconds * config.fps)} frames): {int(rss_kb) / 1024:.0f} MB, "
              f"{time.perf_counter() - start:.0f} s", flush=True)
    return peaks


if __name__ == "__main__":
    main()
