"""scripts/video_strip.py: the strip's layout, and its occlusion row marks what a moving object uncovers."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from colordiff.errors import UsageError

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("video_strip", REPO / "scripts" / "video_strip.py")
video_strip = importlib.util.module_from_spec(spec)
spec.loader.exec_module(video_strip)


def _frames(root: Path) -> Path:
    """Four 128 x 96 frames: a textured square moving 8 px right a frame over a still textured background."""
    rng = np.random.default_rng(0)
    background = rng.integers(0, 256, (12, 16, 3)).repeat(8, 0).repeat(8, 1)  # (96, 128, 3) 8-px blocks
    square = rng.integers(0, 256, (4, 4, 3)).repeat(8, 0).repeat(8, 1)  # (32, 32, 3)
    root.mkdir()
    for i in range(4):
        frame = background.copy()
        frame[32:64, 24 + 8 * i:56 + 8 * i] = square
        Image.fromarray(frame.astype(np.uint8)).save(root / f"{i:03d}.png")
    return root


def test_strip_rows_columns_and_occlusion(tmp_path):
    truth = _frames(tmp_path / "truth")
    out = video_strip.main(["--truth", str(truth), "--run", f"copy={truth}", "--frames", "2", "3", "--width", "128",
                            "-o", str(tmp_path / "strip.jpg")])
    strip = np.asarray(Image.open(out).convert("L")).astype(float)
    header, height, label = video_strip.HEADER, 96, video_strip.LABEL_WIDTH
    assert strip.shape == (header + 4 * height, label + 2 * 128)  # gray, truth, copy, occlusion; two frames
    truth_tile = strip[header + height:header + 2 * height, label:label + 128]
    copy_tile = strip[header + 2 * height:header + 3 * height, label:label + 128]
    assert np.abs(truth_tile - copy_tile).mean() < 2  # a run's frame is shown as it is
    mask = strip[header + 3 * height:, label:label + 128]  # frame 2's occlusion against frame 1
    uncovered = mask[36:60, 26:38].mean()  # background the square left (x 32-40) and the square's edge
    still = np.concatenate([mask[:24].ravel(), mask[72:].ravel()]).mean()  # rows the square never touches
    assert uncovered > 100 and still < 30


def test_a_missing_frame_is_named(tmp_path):
    truth = _frames(tmp_path / "truth")
    with pytest.raises(UsageError, match=r"truth: no frame numbered 8, 9"):
        video_strip.main(["--truth", str(truth), "--frames", "9", "-o", str(tmp_path / "s.jpg")])
