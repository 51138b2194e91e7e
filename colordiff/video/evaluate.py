"""`colordiff evaluate-video`: how much a colorized video flickers, and, with the color original, how colorful and
how close it is.

Warping error (Lai et al., "Learning Blind Video Temporal Consistency", ECCV 2018): for consecutive frames t, t+1,
E_t = sum_x M(x) |V_{t+1}(x) - V_t(x + b(x))|^2 / sum_x M(x), b the flow t+1 -> t, M the pixels that pass the
forward-backward consistency test (not occluded); E_warp is the mean of E_t over the pairs. The flow is computed on
the luma. `warp_error_ab` measures the Lab chroma (a, b in Lab units: the luma is the input's by construction),
`warp_error_rgb` the RGB in [0, 1] as Lai et al. do.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from colordiff import metrics as M
from colordiff.color import rgb_to_lab
from colordiff.config import to_yaml
from colordiff.errors import EXIT_FAILURES, EXIT_OK
from colordiff.io import atomic_write
from colordiff.video.flow import bilinear_at, consistency, identity_grid, make_flow
from colordiff.video.io import VideoReadError, open_clip
from colordiff.video.propagate import grid_size

THRESHOLD = math.exp(-1)  # consistency weight exp(-error / scale) above this: error below scale, not occluded


def _prepared(rgb: np.ndarray, side: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """A frame (H, W, 3) as Lab (3, h, w) and RGB (3, h, w) in [0, 1] on the measuring grid, and its 8-bit luma."""
    x = torch.from_numpy(np.asarray(rgb, dtype=np.float32)).permute(2, 0, 1)  # (3, H, W)
    x = x / 255 if rgb.dtype == np.uint8 else x
    if side:
        size = grid_size(*x.shape[-2:], side)
        x = x if tuple(x.shape[-2:]) == size else F.interpolate(x[None], size=size, mode="area")[0]
    lab = rgb_to_lab(x)  # (3, h, w)
    gray = (lab[0] * 2.55).round().clamp(0, 255).to(torch.uint8).numpy()
    return lab, x, gray


def warping_errors(frames, flow, side: int, alpha: float, beta: float) -> dict:
    """E_warp of the chroma and of RGB over an iterator of (H, W, 3) frames; also the pairs measured and the mean
    fraction of pixels masked as occluded."""
    previous, ab_errors, rgb_errors, occluded = None, [], [], []
    for rgb in frames:
        current = _prepared(rgb, side)
        if previous is not None:
            (lab0, rgb0, gray0), (lab1, rgb1, gray1) = previous, current
            back, there = flow(gray1, gray0), flow(gray0, gray1)  # t+1 -> t, t -> t+1
            grid = identity_grid(*gray1.shape)
            weight, seen = consistency(back, there, grid, alpha, beta)
            mask = (weight > THRESHOLD).float()  # (1, h, w)
            count = mask.sum().clamp_min(1)
            ab_errors.append(float((mask * (lab1[1:] - bilinear_at(lab0[1:], seen)).square()).sum() / count))
            rgb_errors.append(float((mask * (rgb1 - bilinear_at(rgb0, seen)).square()).sum() / count))
            occluded.append(1 - float(mask.mean()))
        previous = current
    return {"warp_error_ab": float(np.mean(ab_errors)) if ab_errors else 0.0,
            "warp_error_rgb": float(np.mean(rgb_errors)) if rgb_errors else 0.0,
            "n_pairs": len(ab_errors), "occluded_fraction": float(np.mean(occluded)) if occluded else 0.0}


def _frames(path: Path, fps: float | None, counter: list):
    if path.is_dir() and fps is None:
        raise VideoReadError(path, "a frames folder has no frame rate of its own: give it with fps=N (e.g. fps=24)")
    _, frames = open_clip(path, fps or 25.0)
    for frame in frames:
        counter[0] += 1
        rgb = frame.rgb
        yield rgb if rgb.dtype == np.uint8 else np.rint(rgb * 255).astype(np.uint8)


def delta_ab(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean Euclidean distance of the Lab chroma, |ab_pred - ab_gt| (Lab units), of two (H, W, 3) uint8 frames."""
    lab = [rgb_to_lab(torch.from_numpy(x).permute(2, 0, 1).float() / 255) for x in (pred, gt)]  # 2 x (3, H, W)
    return float((lab[0][1:] - lab[1][1:]).square().sum(0).sqrt().mean())


def reference_metrics(pred: Path, gt: Path, fps: float | None) -> dict:
    """Per-frame colorfulness of both, delta_cf, PSNR and mean |delta ab|, frames paired in order (the counts must
    agree)."""
    cf_pred, cf_gt, psnrs, deltas = [], [], [], []
    counts = [0], [0]
    ours, theirs = _frames(pred, fps, counts[0]), _frames(gt, fps, counts[1])
    for index, (p, g) in enumerate(zip(ours, theirs, strict=False)):  # the counts are checked below
        if p.shape != g.shape:
            raise VideoReadError(pred, f"frame {index} is {p.shape[1]} x {p.shape[0]} but the ground truth's is "
                                 f"{g.shape[1]} x {g.shape[0]}")
        cf_pred.append(float(M.colorfulness(p)[0]))
        cf_gt.append(float(M.colorfulness(g)[0]))
        psnrs.append(float(M.psnr(p, g)[0]))
        deltas.append(delta_ab(p, g))
    for rest in (ours, theirs):
        for _ in rest:
            pass
    if counts[0][0] != counts[1][0]:
        raise VideoReadError(pred, f"{counts[0][0]} frames but the ground truth {gt} has {counts[1][0]}")
    finite = [v for v in psnrs if math.isfinite(v)]
    return {"colorfulness": float(np.mean(cf_pred)), "colorfulness_gt": float(np.mean(cf_gt)),
            "delta_cf": M.delta_cf(cf_pred, cf_gt), "psnr": float(np.mean(finite)) if finite else float("inf"),
            "delta_ab": float(np.mean(deltas))}


def evaluate_video(config) -> dict:
    """The results of one evaluation (a dict, as written to JSON)."""
    flow = make_flow(config.flow, config.raft_weights, config.raft_iters)
    counter = [0]
    results = {"pred": config.pred, "gt": config.gt}
    with torch.inference_mode():
        results.update(warping_errors(_frames(Path(config.pred), config.fps, counter), flow, config.grid,
                                      config.alpha, config.beta))
        results["n_frames"] = counter[0]
        if config.gt:
            results.update(reference_metrics(Path(config.pred), Path(config.gt), config.fps))
    results["config"] = to_yaml(config)
    return results


def run_evaluate_video(config) -> int:
    try:
        results = evaluate_video(config)
    except VideoReadError as err:
        print(f"colordiff: {err}", file=sys.stderr)
        return EXIT_FAILURES
    text = json.dumps(results, indent=2) + "\n"
    if config.json:
        with atomic_write(config.json) as tmp:
            tmp.write_text(text)
    print(text)
    print(f"colordiff: evaluated {results['n_frames']} frames", file=sys.stderr)
    return EXIT_OK
