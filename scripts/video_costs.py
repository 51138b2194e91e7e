"""Where the time of a `colordiff colorize-video` run goes, stage by stage: the run is profiled (cProfile) and the
time spent in each stage's function is printed per frame, for per-frame colorizing and for keyframes + flow.

    python scripts/video_costs.py FRAMES_DIR [--model DIR] [--resolution 256] [--steps 10] [--count 48]

FRAMES_DIR is a folder of frames (e.g. the gray clip scripts/video_benchmark.py writes); without --model a tiny random
model is made in the work folder. The stages: reading a frame, its exact L and grid luma (analyse), optical flow,
the model calls (with the full-size merge of their chroma under L, the gamut fit included, shown apart), the same
merge for the frames flow carries, writing the frame, and everything else (propagation on the grid, shot detection,
Python). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import shutil
import tempfile
import time
from pathlib import Path

from colordiff.cli import main as colordiff

# stage -> (file name, function name) of the function whose cumulative time is that stage's
STAGES = {
    "read frame": ("io.py", "read_image"),
    "analyse (L, grid)": ("propagate.py", "analyse"),
    "flow": ("flow.py", "<lambda>"),
    "model calls": ("base.py", "__call__"),
    "merge, flow frames": ("propagate.py", "to_rgb8"),
    "write frame": ("encode.py", "write"),
}
MERGE = ("images.py", "merge_into")  # the merge of every frame, inside the model calls or not


def stage_seconds(stats: pstats.Stats) -> dict[str, float]:
    """Cumulative seconds of each stage's function (summed over the functions of that file and name), of the merge
    inside the model calls, and of everything else in the run."""
    found = dict.fromkeys([*STAGES, "merge inside model calls"], 0.0)
    for (filename, _, name), (_, _, _, cumulative, callers) in stats.stats.items():
        key = (Path(filename).name, name)
        for stage, function in STAGES.items():
            found[stage] += cumulative if key == function else 0.0
        if key == MERGE:  # split by caller: the pipeline's own output step or a flow frame's to_rgb8
            found["merge inside model calls"] += sum(c[3] for (f, _, n), c in callers.items()
                                                     if (Path(f).name, n) != STAGES["merge, flow frames"])
    return found


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("frames", help="a folder of frames")
    parser.add_argument("--model", default=None, help="a model folder (default: a tiny random model)")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--count", type=int, default=48, help="frames used from the start of the folder")
    parser.add_argument("--fps", type=float, default=24)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="video_costs_"))
    try:
        clip = work / "clip"
        clip.mkdir()
        for file in sorted(Path(args.frames).iterdir(), key=lambda p: p.name)[:args.count]:
            shutil.copy(file, clip / file.name)
        frames = len(list(clip.iterdir()))
        model = args.model
        if model is None:
            model = str(work / "tiny")
            assert colordiff(["init-model", model, "--tiny"]) == 0
        result = {}
        for mode in ("none", "flow"):
            profiler = cProfile.Profile()
            start = time.perf_counter()
            profiler.enable()
            status = colordiff(["colorize-video", str(clip), "-o", str(work / mode), "--model", model, "--temporal",
                                mode, "--steps", str(args.steps), "--resolution", str(args.resolution), "--device",
                                "cpu", f"output.frame_rate={args.fps}"])
            profiler.disable()
            seconds = time.perf_counter() - start
            if status != 0:
                raise SystemExit(f"colorize-video --temporal {mode} failed ({status})")
            stages = stage_seconds(pstats.Stats(profiler))
            stages["everything else"] = seconds - sum(v for k, v in stages.items() if k in STAGES)
            per_frame = {k: 1000 * v / frames for k, v in stages.items()}
            result[mode] = {"frames": frames, "ms_per_frame": 1000 * seconds / frames, "stages_ms": per_frame}
            print(f"--temporal {mode}: {frames} frames, {1000 * seconds / frames:.0f} ms a frame (profiled)")
            for stage, ms in per_frame.items():
                print(f"  {stage:<26} {ms:7.1f} ms a frame")
        print(json.dumps(result))
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
