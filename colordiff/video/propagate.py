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
        coverage = float((self.confidence > self.config.flow.reliable).float().mean())
        if (frame.index - self.key_index >= keys.interval or self.motion > keys.motion
                or coverage < keys.min_coverage):
            return self._close_segment(waiting)
        self.waiting.append(waiting)
        return []

    def finish(self) -> list[Output]:
        """The frames after the last keyframe: forward propagation only (their chroma from that keyframe)."""
        cfg = self.config.flow
        out = [self._emit(w.frame, fill_from_reliable(w.ab, (w.confidence > cfg.reliable).float())
                          if cfg.occlusion_fill else w.ab, w) for w in self.waiting]
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
            blended.append((item, self._blend(item, bilinear_at(key_ab, position), confidence, start, end)))
            later = item
        out = [self._emit(item.frame, ab, item) for item, ab in reversed(blended)]
        self.waiting = []
        return [*out, self._emit(waiting.frame, key_ab, waiting)]

    def _blend(self, item: _Waiting, backward_ab: torch.Tensor, backward_c: torch.Tensor, start: int,
               end: int) -> torch.Tensor:
        """A frame's chroma (2, h, w) from the keyframes around it, weighted by confidence times nearness. With
        flow.occlusion_fill, a keyframe whose chroma reaches a pixel at or below flow.reliable gives it nothing,
        and pixels neither keyframe reaches reliably are filled from the reliable pixels around them; without it
        they take the nearer keyframe's chroma along its (unreliable) flow."""
        cfg, t = self.config.flow, item.frame.index
        floor = cfg.reliable if cfg.occlusion_fill else 0.0
        forward_w = item.confidence * (item.confidence > floor) * (end - t)  # (1, h, w): reliable and near
        backward_w = backward_c * (backward_c > floor) * (t - start)
        total = forward_w + backward_w
        known = total > 1e-3 * (end - start)  # (1, h, w)
        ab = (forward_w * item.ab + backward_w * backward_ab) / total.clamp_min(1e-12)  # (2, h, w)
        if cfg.occlusion_fill:
            return fill_from_reliable(ab, known.float())
        return torch.where(known, ab, item.ab if t - start <= end - t else backward_ab)

    def _emit(self, frame: Analysed, ab: torch.Tensor, waiting: _Waiting | None) -> Output:
        """Stage 4 (optional smoothing towards the previous output along the flow), then the merge under L."""
        smooth = self.config.smoothing
        if smooth.enabled and waiting is not None and self.last is not None:
            h, w = frame.gray.shape
            warped = bilinear_at(self.last[1], identity_grid(h, w) + waiting.back)  # (2, h, w)
            ab = ab + smooth.strength * waiting.step * (warped - ab)
        self.last = (frame, ab)
        return frame.index, frame.pts, to_rgb8(frame.L, ab)


def fill_from_reliable(ab: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """ab (2, h, w) kept where known (1, h, w) is 1; elsewhere the mean chroma of the nearest known pixels
    (push-pull: known-weighted means over a pyramid of 2x2 averages, the finest level that has any known pixel
    wins). This is the fallback for occluded pixels: the flow cannot say where they came from, a model call for
    them would cost a full keyframe, and a disoccluded region is mostly the surface next to it, whose chroma is
    reliable; the frame's own L still carries every edge, so smooth chroma there is the safe guess. O(h w)."""
    if bool(known.all()) or not bool(known.any()):
        return ab
    levels = [((ab * known)[None], known[None])]  # [(1, 2, h, w), (1, 1, h, w)]
    while max(levels[-1][1].shape[-2:]) > 1:
        num, den = levels[-1]
        levels.append((F.avg_pool2d(num, 2, ceil_mode=True), F.avg_pool2d(den, 2, ceil_mode=True)))
    num, den = levels[-1]
    estimate = num / den.clamp_min(1e-12)  # (1, 2, 1, 1)
    for num, den in reversed(levels[:-1]):
        coarse = F.interpolate(estimate, size=num.shape[-2:], mode="bilinear", align_corners=False)
        estimate = torch.where(den > 1e-6, num / den.clamp_min(1e-12), coarse)  # (1, 2, h_l, w_l)
    return torch.where(known > 0, ab, estimate[0])


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
