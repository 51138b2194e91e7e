"""A strip of frames, to look at where flow propagation breaks: one row per source (the gray input, the true colors,
each run's output frames) and, last, the occlusion mask (white: pixels of a frame with no reliable match in the
frame before, by the forward-backward flow test `colorize-video` uses); one column per frame.

    python scripts/video_strip.py --truth FRAMES --run per-frame=OUT1 --run flow=OUT2 --frames 184 185 186 187 \
        -o strip.jpg

Frames are matched by file stem (00184.jpg in the truth, 00184.png in a run's frames folder).
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

LABEL_WIDTH = 96
HEADER = 14  # a row of frame numbers above the tiles


def frame_at(folder: Path, stem: str) -> Image.Image:
    found = sorted(folder.glob(f"{stem}.*"))
    if not found:
        raise UsageError(f"{folder}: no frame named {stem}.*")
    return Image.open(found[0]).convert("RGB")


def occlusion_rows(truth: Path, stems: list[str], width: int, height: int) -> list[Image.Image]:
    """The occlusion mask of each frame against the frame before it, on the luma at the strip's size."""
    settings, flow = FlowSettings(), make_flow("dis")
    tiles = []
    for stem in stems:
        previous = f"{int(stem) - 1:0{len(stem)}d}"
        a, b = (np.asarray(gray_pil(frame_at(truth, s).resize((width, height), Image.BILINEAR)))[..., 0]
                for s in (previous, stem))
        mask = occlusion_mask(flow, a, b, settings.alpha, settings.beta, settings.reliable)[0]  # (h, w)
        tiles.append(Image.fromarray((mask.numpy() * 255).astype(np.uint8)).convert("RGB"))
    return tiles


def make_strip(truth: Path, runs: dict[str, Path], stems: list[str], width: int) -> Image.Image:
    first = frame_at(truth, stems[0])
    height = round(first.height * width / first.width)
    rows = {"gray input": [gray_pil(frame_at(truth, s)).convert("RGB") for s in stems],
            "truth": [frame_at(truth, s) for s in stems]}
    rows.update({name: [frame_at(folder, s) for s in stems] for name, folder in runs.items()})
    rows["occlusion"] = occlusion_rows(truth, stems, width, height)
    strip = Image.new("RGB", (LABEL_WIDTH + width * len(stems), HEADER + height * len(rows)), "white")
    draw = ImageDraw.Draw(strip)
    for c, stem in enumerate(stems):
        draw.text((LABEL_WIDTH + c * width + width // 2 - 12, 1), f"frame {int(stem)}", fill="black")
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
    parser.add_argument("--frames", nargs="+", required=True, help="frame stems, e.g. 00184 (or numbers)")
    parser.add_argument("--width", type=int, default=320, help="width of each tile in pixels")
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args(argv)
    runs = {}
    for item in args.run:
        name, sep, folder = item.partition("=")
        if not sep:
            raise UsageError(f"--run {item}: expected NAME=DIR")
        runs[name] = Path(folder)
    digits = len(sorted(args.truth.iterdir())[0].stem)
    stems = [f"{int(f):0{digits}d}" for f in args.frames]
    strip = make_strip(args.truth, runs, stems, args.width)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    partial = args.output.with_name(f".{args.output.name}.partial{args.output.suffix}")
    strip.save(partial, quality=90)
    partial.replace(args.output)
    print(f"wrote {args.output} ({strip.width}x{strip.height})")
    return args.output


if __name__ == "__main__":
    main()
