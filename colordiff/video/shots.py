"""Stage 1: shot detection on the luma. A cut is a frame whose luma changed more than `threshold` from the previous
frame's: half the L1 distance of their 32-bin histograms (0 same, 1 disjoint), or 1 - SSIM."""

from __future__ import annotations

import numpy as np
import torch

from colordiff.metrics import ssim

BINS = 32


def luma_histogram(gray: np.ndarray) -> np.ndarray:
    """Normalized histogram (BINS,) of an 8-bit luma image (h, w)."""
    counts = np.bincount((gray.ravel() >> 3).astype(np.int64), minlength=BINS)  # 256 levels -> 32 bins
    return counts / counts.sum()


def luma_change(previous: np.ndarray, current: np.ndarray, method: str) -> float:
    """How much the luma changed between two 8-bit frames (h, w), in [0, 1]."""
    if method == "histogram":
        return 0.5 * float(np.abs(luma_histogram(previous) - luma_histogram(current)).sum())
    if method == "ssim":
        pair = [torch.from_numpy(np.ascontiguousarray(g))[None, None].expand(-1, 3, -1, -1)
                for g in (previous, current)]  # 2 x (1, 3, h, w) uint8
        return float(1 - ssim(*pair)[0]) if min(previous.shape) >= 7 else 0.0
    raise ValueError(f"unknown shot detection method {method!r}")


class CutDetector:
    """Fed one 8-bit luma frame at a time; says whether that frame starts a new shot (the first frame does)."""

    def __init__(self, settings):
        self.settings, self.previous = settings, None

    def __call__(self, gray: np.ndarray) -> bool:
        previous, self.previous = self.previous, gray
        if previous is None:
            return True
        return self.settings.enabled and luma_change(previous, gray, self.settings.method) > self.settings.threshold
