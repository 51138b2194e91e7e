"""Frames per second, peak RSS, temporal warping error, PSNR, mean |delta ab| and colorfulness of `colordiff
colorize-video`: per-frame colorizing (temporal=none) vs keyframes + optical flow (temporal=flow), on a camera pan
generated from a real photo, or on a real clip given as a folder of color frames (`frames=DIR fps=N`), whose gray
version the benchmark makes itself and whose color frames are the truth (their own warping error is the floor).

    python scripts/video_benchmark.py                                   # configs/benchmark/video.yaml
    python scripts/video_benchmark.py model=models/mini seconds=4       # any model folder, a shorter clip
    python scripts/video_benchmark.py --config configs/benchmark/video_bedroom.yaml   # a real clip (frames folder)

With memory=true it also runs a short and a long clip (memory_seconds) in processes of their own and prints each
one's peak RSS: streaming keeps it flat in the clip's length. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from colordiff.cli import main as colordiff
from colordiff.config import load_config
from colordiff.errors import UsageError
from colordiff.images import gray_pil
from colordiff.io import ImageReadError, read_image
from colordiff.video.config import EvalVideoConfig
from colordiff.video.evaluate import evaluate_video
from colordiff.video.io import numbered_frames
from colordiff.video.synthetic import camera_frames, write_clip

REPO = Path(__file__).resolve().parents[1]
MEMORY_CHILD = """
import resource, sys, time
from colordiff.cli import main
start = time.perf_counter()
code = main(sys.argv[1:])
print(code, time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
MODES = {"per-frame": ["--temporal", "none"], "flow": ["--temporal", "flow"]}


@dataclass
class VideoBenchmarkConfig:
    photo: str = str(REPO / "examples" / "photos" / "kodim05.jpg")
    seconds: float = 10.0
    fps: float | None = 25  # the pan's frame rate; with `frames`, the folder's (required)
    frames: str | None = None  # a folder of color frames (sorted by their numbers): the clip instead of the pan
    first: int = 0  # frames: the first frame used
    count: int = 0  # frames: how many (0: all from `first`)
    modes: dict[str, list[str]] | None = None  # row -> colorize-video arguments (None: MODES); first: the baseline
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
        write_clip(path, camera_frames(photo, size, round(seconds * config.fps), "pan"), rate=round(config.fps),
                   options={"crf": "18"})
    return path


def colorize_args(config, clip: Path, out: Path, model: str, extra: list[str]) -> list[str]:
    return ["colorize-video", str(clip), "-o", str(out), "--model", model, "--overwrite", "--steps",
            str(config.steps), "--resolution", str(config.resolution), "--keyframe-interval",
            str(config.keyframe_interval), "--device", "cpu", f"output.frame_rate={config.fps or 25}", *extra]


def run_child(argv: list[str]) -> tuple[float, float]:
    """`colordiff ARGV` in a process of its own: (seconds inside colordiff's main, peak RSS in MB)."""
    done = subprocess.run([sys.executable, "-c", MEMORY_CHILD, *argv], capture_output=True, text=True)
    lines = done.stdout.split()
    if done.returncode != 0 or len(lines) < 3 or lines[-3] != "0":
        raise RuntimeError(f"colordiff {' '.join(argv)} failed: {done.stderr.strip()[-2000:]}")
    return float(lines[-2]), int(lines[-1]) / 1024


def frames_clip(config: VideoBenchmarkConfig, work: Path) -> tuple[Path, Path, int]:
    """The benchmark's copy of the frames folder's chosen frames (the truth) and their gray version (the input):
    (color folder, gray folder, frame count). A bad folder or frame is a one-line UsageError naming it."""
    source = Path(config.frames)
    if not source.is_dir():
        raise UsageError(f"frames {source}: not a folder of frames")
    if not config.fps:
        raise UsageError(f"frames {source}: a frames folder needs its frame rate: give fps=N (e.g. fps=24)")
    files = numbered_frames(source)[config.first:]
    files = files[:config.count] if config.count else files
    if len(files) < 2:
        raise UsageError(f"frames {source}: {len(files)} image frames from frame {config.first}; at least 2 needed")
    name = f"{source.name}_{config.first}_{len(files)}"
    color, gray = work / "clips" / name, work / "clips" / f"{name}_gray"
    if not (gray.is_dir() and len(list(gray.iterdir())) == len(files)):
        shutil.rmtree(color, ignore_errors=True)
        shutil.rmtree(gray, ignore_errors=True)
        color.mkdir(parents=True)
        gray.mkdir(parents=True)
        for k, file in enumerate(files):
            try:
                image = read_image(file)
            except ImageReadError as err:
                raise UsageError(f"{file}: {err.reason}") from None
            shutil.copy(file, color / f"{k:05d}{file.suffix.lower()}")
            gray_pil(image.rgb).save(gray / f"{k:05d}.png")
    return color, gray, len(files)


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
    """frames/s, peak RSS, warping error (and with a frames folder: PSNR, mean |delta ab|, colorfulness and the
    color original's own warping error, the floor) of each mode."""
    if config.frames:
        color, clip, frames = frames_clip(config, work)
        truth, fps = str(color), config.fps
        floor = evaluate_video(EvalVideoConfig(pred=truth, fps=fps))
        description = f"{config.frames}: frames {config.first}-{config.first + frames - 1} at {fps:g} fps"
    else:
        clip = pan_clip(config, work / f"pan_{config.height}p_{config.seconds:g}s.mp4", config.seconds,
                        (config.width, config.height))
        frames, truth, fps, floor = round(config.seconds * config.fps), None, None, None
        description = f"{config.width}x{config.height}, {config.seconds:g} s at {config.fps:g} fps, {frames} frames"
    rows = {}
    for name, extra in (config.modes or MODES).items():
        out = work / "runs" / name.replace(" ", "_")
        seconds, rss = run_child(colorize_args(config, clip, out, model, list(extra)))
        scores = evaluate_video(EvalVideoConfig(pred=str(out / clip.name), gt=truth, fps=fps))
        rows[name] = {"frames_per_s": frames / seconds, "seconds": seconds, "peak_rss_mb": rss,
                      **{k: scores[k] for k in ("warp_error_ab", "warp_error_rgb", "psnr", "delta_ab",
                                                "colorfulness", "colorfulness_gt") if k in scores}}
        print(f"{name:>12}: " + ", ".join(f"{k} {v:.4g}" for k, v in rows[name].items()), flush=True)
    result = {"clip": description, "rows": rows}
    if floor is not None:
        result["floor"] = {k: floor[k] for k in ("warp_error_ab", "warp_error_rgb")}
        print(f"       floor: warp_error_ab {floor['warp_error_ab']:.4g} (the color original itself)", flush=True)
    result["goals"] = goals(rows, result.get("floor", {}).get("warp_error_ab", 0.0))
    return result


def goals(rows: dict, floor: float) -> dict:
    """Each flow row against the first row (per-frame): (flow - floor) <= (per-frame - floor) / 3, >= 3x the
    frames/s, PSNR no lower (where measured)."""
    names = list(rows)
    base, out = rows[names[0]], {}
    for name in names[1:]:
        row = rows[name]
        above = (row["warp_error_ab"] - floor) / max(base["warp_error_ab"] - floor, 1e-12)
        speedup = row["frames_per_s"] / base["frames_per_s"]
        psnr_ok = row.get("psnr", 0.0) >= base.get("psnr", 0.0)
        out[name] = {"warp_above_floor_ratio": above, "speedup": speedup, "psnr_ok": psnr_ok,
                     "met": above <= 1 / 3 and speedup >= 3 and psnr_ok}
        print(f"{name} / {names[0]}: {speedup:.2f}x the frames/s, {above:.3f}x the warping error above the floor, "
              f"PSNR {'not lower' if psnr_ok else 'lower'}: goal {'met' if out[name]['met'] else 'not met'}",
              flush=True)
    return out


def memory(config: VideoBenchmarkConfig, work: Path, model: str) -> dict:
    """Peak RSS (MB) of temporal=flow runs on a short and a long clip, each in a process of its own."""
    peaks = {}
    for seconds in config.memory_seconds:
        long_clip = pan_clip(config, work / f"pan_{config.memory_height}p_{seconds:g}s.mp4", seconds,
                             (config.memory_width, config.memory_height))
        argv = colorize_args(config, long_clip, work / "memory", model, ["--temporal", "flow"])
        elapsed, rss = run_child(argv)
        peaks[f"{seconds:g}s"] = rss
        print(f"peak RSS, {config.memory_width}x{config.memory_height} {seconds:g} s clip "
              f"({round(seconds * config.fps)} frames): {rss:.0f} MB, {elapsed:.0f} s", flush=True)
    return peaks


if __name__ == "__main__":
    try:
        main()
    except UsageError as err:
        sys.exit(f"video_benchmark: {err}")
