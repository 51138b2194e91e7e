"""Dense optical flow on the luma and the warping it drives.

A flow from frame a to frame b is (2, h, w) float32, (dx, dy) per pixel of a: a(x) matches b(x + flow(x)). OpenCV's
DIS (default) and Farneback run on 8-bit luma; torchvision's RAFT runs when its weights are given as a local
safetensors file (nothing downloads).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from colordiff.config import error_line
from colordiff.errors import UsageError

RAFT_MIN_SIDE = 128  # RAFT's correlation pyramid needs sides of at least 128 (smaller frames are padded)


def make_flow(method: str, raft_weights: str | None = None, raft_iters: int = 12):
    """A function (gray_a (h, w) uint8, gray_b (h, w) uint8) -> flow a -> b (2, h, w) float32 tensor."""
    import cv2

    if method == "dis":
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        return lambda a, b: _from_cv(dis.calc(a, b, None))
    if method == "farneback":
        return lambda a, b: _from_cv(cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 4, 15, 3, 5, 1.2, 0))
    if method == "raft":
        return _raft(raft_weights, raft_iters)
    raise UsageError(f"unknown flow method {method!r}; choose dis, farneback or raft")


def _from_cv(flow: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(flow.transpose(2, 0, 1)))  # (h, w, 2) -> (2, h, w)


def _raft(weights: str | None, iters: int):
    """torchvision's RAFT (large or small, told apart by the file's keys) from a local safetensors file."""
    from safetensors.torch import load_file
    from torchvision.models.optical_flow import raft_large, raft_small

    if not weights or not Path(weights).is_file():
        raise UsageError(f"flow.raft_weights {weights}: not a file (a local safetensors file of torchvision's RAFT)")
    try:
        state = load_file(weights)
    except Exception as err:  # noqa: BLE001 - any unreadable file is one line
        raise UsageError(f"flow.raft_weights {weights}: not a readable safetensors file: {error_line(err)}") from None
    model = None
    for build in (raft_large, raft_small):
        candidate = build(weights=None)
        if set(candidate.state_dict()) == set(state):
            candidate.load_state_dict(state)
            model = candidate.eval()
            break
    if model is None:
        raise UsageError(f"flow.raft_weights {weights}: the weights are neither raft_large's nor raft_small's")

    @torch.inference_mode()
    def flow(a: np.ndarray, b: np.ndarray) -> torch.Tensor:
        h, w = a.shape
        pad = (0, max(RAFT_MIN_SIDE, w + (-w) % 8) - w, 0, max(RAFT_MIN_SIDE, h + (-h) % 8) - h)
        pair = [F.pad(torch.from_numpy(np.array(x)).float()[None, None].div(127.5).sub(1), pad, mode="replicate")
                .expand(-1, 3, -1, -1) for x in (a, b)]  # 2 x (1, 3, h8, w8) in [-1, 1]
        return model(*pair, num_flow_updates=iters)[-1][0, :, :h, :w].contiguous()  # (2, h, w)

    return flow


def identity_grid(h: int, w: int) -> torch.Tensor:
    """Pixel coordinates (x, y) of a (h, w) grid: (2, h, w)."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return torch.stack([xs, ys])


def bilinear_at(field: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of field (C, h, w) at pixel positions (2, h', w') (x, y), border values outside: (C, h', w')."""
    h, w = field.shape[-2:]
    norm = torch.stack([positions[0] * (2 / max(w - 1, 1)) - 1, positions[1] * (2 / max(h - 1, 1)) - 1], dim=-1)
    return F.grid_sample(field[None], norm[None], mode="bilinear", padding_mode="border", align_corners=True)[0]


def inside(positions: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """1 where positions (2, h', w') fall inside a (h, w) frame, else 0: (1, h', w')."""
    x, y = positions
    return ((x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)).float()[None]


def consistency(there: torch.Tensor, back: torch.Tensor, grid: torch.Tensor, alpha: float, beta: float):
    """Soft forward-backward check of a flow `there` (a -> b) against `back` (b -> a), per pixel of a (Sundaram et
    al. 2010, the occlusion test of Lai et al. 2018): w = exp(-|f + b(x + f)|^2 / (alpha (|f|^2 + |b|^2) + beta)),
    0 where x + f leaves the frame. Returns (weight (1, h, w), the positions x + f (2, h, w))."""
    target = grid + there  # (2, h, w)
    returned = bilinear_at(back, target)  # (2, h, w)
    error = (there + returned).square().sum(0, keepdim=True)  # (1, h, w)
    scale = alpha * (there.square().sum(0, keepdim=True) + returned.square().sum(0, keepdim=True)) + beta
    return torch.exp(-error / scale) * inside(target, *there.shape[-2:]), target


def occlusion_mask(flow, gray_a: np.ndarray, gray_b: np.ndarray, alpha: float, beta: float,
                   reliable: float) -> torch.Tensor:
    """1 where a pixel of frame b (h, w) has no reliable match in frame a (occluded, uncovered or from outside the
    frame): its forward-backward consistency (`consistency`) is at or below `reliable`; else 0. (1, h, w)."""
    back, there = flow(gray_b, gray_a), flow(gray_a, gray_b)  # b -> a, a -> b
    weight, _ = consistency(back, there, identity_grid(*gray_b.shape), alpha, beta)  # (1, h, w)
    return (weight <= reliable).float()
