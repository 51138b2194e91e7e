"""A strip of frames, to look at where flow propagation breaks: one row per source (the gray input, the true colors,
each run's output frames) and, last, the occlusion mask (white: pixels of a frame with no reliable match in the
frame before, by the forward-backward flow test `colorize-video` uses); one column per frame.

    python scripts/video_strip.py --truth FRAMES --run per-frame=OUT1 --run flow=OUT2 --frames 184 185 186 187 \
        -o strip.jpg

Frames are matched by the last number in their names, as `colorize-video` orders a frames folder (00184.jpg in
the truth, 00184.png in a run's output).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from colordiff.errors import UsageError
from colordiff.images import gray_pil
from colordiff.video.config import FlowSettings
from colordiff.video.flow import make_flow, occlusion_mask
from colordiff.video.io import frame_number, numbered_frames

LABEL_WIDTH = 96
HEADER = 14  # a row of frame numbers above the tiles


def frames_by_number(folder: Path, numbers: list[int]) -> dict[int, Image.Image]:
    """The frames `numbers` of a frames folder, each read once."""
    paths = {frame_number(p): p for p in numbered_frames(folder)}
    missing = [n for n in numbers if n not in paths]
    if missing:
        raise UsageError(f"{folder}: no frame numbered {', '.join(map(str, missing))}")
    return {n: Image.open(paths[n]).convert("RGB") for n in numbers}


def occlusion_tile(before: Image.Image, frame: Image.Image, width: int, height: int, flow) -> Image.Image:
    """The occlusion mask of a frame against the frame before it, on the luma at the strip's size."""
    settings = FlowSettings()
    a, b = (np.asarray(gray_pil(f.resize((width, height), Image.BILINEAR)))[..., 0] for f in (before, frame))
    mask = occlusion_mask(flow, a, b, settings.alpha, settings.beta, settings.reliable)[0]  # (h, w)
    return Image.fromarray((mask.numpy() * 255).astype(np.uint8)).convert("RGB")


def make_strip(truth: Path, runs: dict[str, Path], numbers: list[int], width: int) -> Image.Image:
    frames = frames_by_number(truth, sorted({*numbers, *(n - 1 for n in numbers)}))
    first = frames[numbers[0]]
    height = round(first.height * width / first.width)
    flow = make_flow("dis")
    rows = {"gray input": [gray_pil(frames[n]).convert("RGB") for n in numbers],
            "truth": [frames[n] for n in numbers]}
    rows.update({name: list(frames_by_number(folder, numbers).values()) for name, folder in runs.items()})
    rows["occlusion"] = [occlusion_tile(frames[n - 1], frames[n], width, height, flow) for n in numbers]
    strip = Image.new("RGB", (LABEL_WIDTH + width * len(numbers), HEADER + height * len(rows)), "white")
    draw = ImageDraw.Draw(strip)
    for c, number in enumerate(numbers):
        draw.text((LABEL_WIDTH + c * width + width // 2 - 12, 1), f"frame {number}", fill="black")
    for r, (name, tiles) in enumerate(rows.items()):
        top = HEADER + r * height
        draw.text((4, top + height // 2 - 6), name, fill="black")
        for c, tile in enumerate(tiles):
            strip.paste(tile.resize((width, height), Image.BILINEAR), (LABEL_WIDTH + c * width, top))
    return strip


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--truth", type=Path, required=True, help="folder of the color frames")
    parser.add_argument("--run", action="append", default=[], metavar="NAME=DIR", help="a run's output frames")
    parser.add_argument("--frames", nargs="+", type=int, required=True, help="frame numbers, e.g. 184 185")
    parser.add_argument("--width", type=int, default=320, help="width of each tile in pixels")
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args(argv)
    runs = {}
    for item in args.run:
        name, sep, folder = item.partition("=")
        if not sep:
            raise UsageError(f"--run {item}: expected NAME=DIR")
        runs[name] = Path(folder)
    strip = make_strip(args.truth, runs, args.frames, args.width)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    partial = args.output.with_name(f".{args.output.name}.partial{args.output.suffix}")
    strip.save(partial, quality=90)
    partial.replace(args.output)
    print(f"wrote {args.output} ({strip.width}x{strip.height})")
    return args.output


if __name__ == "__main__":
    main()
