"""Stages 2-4 within one shot: keyframes colorized by the model, their chroma carried to the frames between them
along the flow, forward and backward, blended by flow confidence; optional smoothing along the flow.

Everything temporal runs on a grid of at most `flow.grid` pixels a side: the luma, the flows, the keyframes' a/b
and the propagated a/b. Each output frame is that a/b enlarged under the frame's own exact Lab L (merge_into, as
for images), so a frame's luma is never touched. Chroma is sampled from the keyframe once per frame, through
composed coordinate maps (x -> position in the keyframe), not re-warped frame after frame, so it does not blur.

Memory: frames wait between two keyframes (at most keyframes.interval of them), each as its full-size L (4 bytes a
pixel) and a few grid-sized maps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from colordiff.images import luminance_of, merge_into
from colordiff.video.flow import bilinear_at, consistency, identity_grid

Output = tuple[int, int, np.ndarray]  # (frame index, pts, (H, W, 3) uint8 RGB)
RELIABLE = 0.5  # a pixel whose propagated confidence is above this counts as covered


@dataclass
class Analysed:
    """A frame reduced to what colorization needs: its exact L and its luma on the grid."""

    index: int
    pts: int
    L: torch.Tensor  # (1, 1, H, W) float32, the exact Lab L
    L_grid: torch.Tensor  # (1, 1, h, w)
    gray: np.ndarray  # (h, w) uint8: L_grid * 2.55, what flow and shot detection see


def grid_size(height: int, width: int, side: int) -> tuple[int, int]:
    """(h, w) with the aspect ratio kept and the longer side at most `side` (never enlarged)."""
    scale = min(1.0, side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def analyse(index: int, pts: int, rgb: np.ndarray, side: int) -> Analysed:
    """The exact L of a decoded frame (H, W, 3) and its grid luma."""
    L = luminance_of(rgb)  # (1, 1, H, W)
    size = grid_size(*L.shape[-2:], side)
    L_grid = L if tuple(L.shape[-2:]) == size else F.interpolate(L, size=size, mode="area")  # (1, 1, h, w)
    gray = (L_grid[0, 0] * 2.55).round().clamp(0, 255).to(torch.uint8).numpy()
    return Analysed(index, pts, L, L_grid, gray)


def to_rgb8(L: torch.Tensor, ab: torch.Tensor) -> np.ndarray:
    """The frame's exact L (1, 1, H, W) under chroma ab (2, h, w): (H, W, 3) uint8 (in gamut, L kept)."""
    return np.asarray(merge_into(L, ab[None], "pil"))


@dataclass
class _Waiting:
    frame: Analysed
    into: torch.Tensor  # (2, h, w) flow previous -> this frame
    back: torch.Tensor  # (2, h, w) flow this -> previous frame
    step: torch.Tensor  # (1, h, w) consistency of `back` (this frame's pixels seen in the previous frame)
    ab: torch.Tensor  # (2, h, w) chroma carried forward from the last keyframe
    confidence: torch.Tensor  # (1, h, w) of that chroma


class FlowShot:
    """One shot, fed frame by frame; returns the frames it finished, in order.

    colorize(L_grid (1, 1, h, w)) -> a/b (2, h, w) is the model call of a keyframe (the shot's seed inside);
    flow(gray_a, gray_b) -> (2, h, w) the optical flow a -> b."""

    def __init__(self, colorize: Callable, flow: Callable, config):
        self.colorize, self.flow, self.config = colorize, flow, config
        self.key_index, self.key_ab = None, None
        self.position = self.confidence = None  # (2, h, w) position in the keyframe, (1, h, w) its confidence
        self.motion, self.waiting, self.last = 0.0, [], None  # last: (Analysed, ab) of the frame emitted last
        self.keyframes = 0

    def push(self, frame: Analysed) -> list[Output]:
        if self.last is None and self.key_ab is None:  # the shot's first frame is a keyframe
            return [self._keyframe(frame, None)]
        previous = self.waiting[-1].frame if self.waiting else self.last[0]
        into, back = self.flow(previous.gray, frame.gray), self.flow(frame.gray, previous.gray)
        h, w = frame.gray.shape
        grid = identity_grid(h, w)
        cfg = self.config.flow
        step, seen = consistency(back, into, grid, cfg.alpha, cfg.beta)  # this frame's pixels in the previous one
        self.position = bilinear_at(self.position, seen)  # (2, h, w) composed: x -> previous -> ... -> keyframe
        self.confidence = bilinear_at(self.confidence, seen) * step  # (1, h, w)
        ab = bilinear_at(self.key_ab, self.position)  # (2, h, w)
        self.motion += float(back.square().sum(0).sqrt().mean()) / float(np.hypot(h, w))
        waiting = _Waiting(frame, into, back, step, ab, self.confidence)
        keys = self.config.keyframes
        coverage = float((self.confidence > RELIABLE).float().mean())
        if (frame.index - self.key_index >= keys.interval or self.motion > keys.motion
                or coverage < keys.min_coverage):
            return self._close_segment(waiting)
        self.waiting.append(waiting)
        return []

    def finish(self) -> list[Output]:
        """The frames after the last keyframe: forward propagation only (their chroma from that keyframe)."""
        out = [self._emit(w.frame, w.ab, w) for w in self.waiting]
        self.waiting = []
        return out

    def _keyframe(self, frame: Analysed, waiting: _Waiting | None) -> Output:
        return self._emit(frame, self._new_key(frame), waiting)

    def _new_key(self, frame: Analysed) -> torch.Tensor:
        """Colorize `frame` as the keyframe the next frames are carried from; returns its a/b (2, h, w)."""
        self.keyframes += 1
        self.key_index, self.key_ab = frame.index, self.colorize(frame.L_grid)  # (2, h, w)
        h, w = frame.gray.shape
        self.position, self.confidence = identity_grid(h, w), torch.ones(1, h, w)
        self.motion = 0.0
        return self.key_ab

    def _close_segment(self, waiting: _Waiting) -> list[Output]:
        """`waiting` becomes the next keyframe; the frames between the two get both keyframes' chroma."""
        start, end = self.key_index, waiting.frame.index
        key_ab = self._new_key(waiting.frame)
        h, w = waiting.frame.gray.shape
        grid = identity_grid(h, w)
        cfg = self.config.flow
        position, confidence, later = grid, torch.ones(1, h, w), waiting
        blended = []
        for item in reversed(self.waiting):  # backward: x in this frame -> the next frame -> ... -> the new keyframe
            step, seen = consistency(later.into, later.back, grid, cfg.alpha, cfg.beta)
            position, confidence = bilinear_at(position, seen), bilinear_at(confidence, seen) * step
            backward_ab = bilinear_at(key_ab, position)  # (2, h, w)
            t = item.frame.index
            forward_w = item.confidence * (end - t)  # (1, h, w): reliable and near weighs most
            backward_w = confidence * (t - start)
            total = forward_w + backward_w
            nearer = item.ab if t - start <= end - t else backward_ab  # where neither keyframe is reliable
            ab = torch.where(total > 1e-3 * (end - start), (forward_w * item.ab + backward_w * backward_ab)
                             / total.clamp_min(1e-12), nearer)  # (2, h, w)
            blended.append((item, ab))
            later = item
        out = [self._emit(item.frame, ab, item) for item, ab in reversed(blended)]
        self.waiting = []
        return [*out, self._emit(waiting.frame, key_ab, waiting)]

    def _emit(self, frame: Analysed, ab: torch.Tensor, waiting: _Waiting | None) -> Output:
        """Stage 4 (optional smoothing towards the previous output along the flow), then the merge under L."""
        smooth = self.config.smoothing
        if smooth.enabled and waiting is not None and self.last is not None:
            h, w = frame.gray.shape
            warped = bilinear_at(self.last[1], identity_grid(h, w) + waiting.back)  # (2, h, w)
            ab = ab + smooth.strength * waiting.step * (warped - ab)
        self.last = (frame, ab)
        return frame.index, frame.pts, to_rgb8(frame.L, ab)


class PerFrameShot:
    """`temporal=none`: every frame colorized on its own at full size, batch_size frames per model call."""

    def __init__(self, colorize_frames: Callable, batch_size: int):
        self.colorize_frames, self.batch_size, self.waiting, self.keyframes = colorize_frames, batch_size, [], 0

    def push(self, frame: Analysed) -> list[Output]:
        self.waiting.append(frame)
        return self.finish() if len(self.waiting) >= self.batch_size else []

    def finish(self) -> list[Output]:
        if not self.waiting:
            return []
        images = self.colorize_frames([f.L for f in self.waiting])  # list of (H, W, 3) uint8
        self.keyframes += len(self.waiting)
        out = [(f.index, f.pts, image) for f, image in zip(self.waiting, images, strict=True)]
        self.waiting = []
        return out
