"""Balanced hue accuracy: whether a colorization puts the right hues across the color wheel (this project's measure,
not the papers'; docs/evaluation.md). Gray scores 0 and one mean color scores only in its own hue sectors, where PSNR
and mean |Δab| reward both."""

from __future__ import annotations

import math

import torch

from colordiff.metrics import as_uint8_batch


def hue_sector_counts(pred, gt, mask: torch.Tensor | None = None, min_chroma: float = 10.0,
                      pred_min_chroma: float = 5.0, tolerance: float = 45.0) -> torch.Tensor:
    """Per image and Lab hue sector of the truth: (B, 2, 6) float64, [0] the pixels whose prediction has the right hue,
    [1] the pixels counted. Counted: ground-truth pixels with chroma >= min_chroma (and inside `mask` (B, H, W) when
    given), in six 60-degree sectors of the truth's Lab hue; right: the prediction's chroma is >= pred_min_chroma and
    its hue within `tolerance` degrees of the truth's. This project's measure (docs/evaluation.md), not the papers'."""
    from colordiff.color import rgb_to_lab

    p, g = as_uint8_batch(pred), as_uint8_batch(gt)
    if p.shape != g.shape:
        raise ValueError(f"pred {tuple(p.shape)} and gt {tuple(g.shape)} must have the same shape")
    p, g = (rgb_to_lab(x.double() / 255)[:, 1:] for x in (p, g))  # (B, 2, H, W) each
    chroma_p, chroma_g = p.norm(dim=1), g.norm(dim=1)  # (B, H, W)
    hue_p, hue_g = torch.atan2(p[:, 1], p[:, 0]), torch.atan2(g[:, 1], g[:, 0])  # radians, (B, H, W)
    gap = torch.remainder(hue_p - hue_g + math.pi, 2 * math.pi) - math.pi  # signed hue difference in (-pi, pi]
    counted = chroma_g >= min_chroma
    if mask is not None:
        counted &= mask.to(counted.device, torch.bool)
    right = counted & (chroma_p >= pred_min_chroma) & (gap.abs() <= math.radians(tolerance))
    sector = (torch.remainder(hue_g, 2 * math.pi) // (math.pi / 3)).long().clamp_max(5)  # (B, H, W) in 0..5
    out = torch.zeros(len(p), 2, 6, dtype=torch.float64)
    for k, which in enumerate((right, counted)):
        out[:, k] = torch.stack([(which & (sector == s)).flatten(1).sum(1) for s in range(6)], 1).double()
    return out


def balanced_hue_accuracy(counts: torch.Tensor, min_share: float = 0.005) -> float:
    """From hue_sector_counts summed over a set (2, 6): the share of right-hued pixels per sector, averaged over the
    sectors that hold at least `min_share` of the counted pixels (each sector weighs the same, whatever its size).
    Gray scores 0; one mean color scores only in its own sectors. nan when nothing is counted."""
    hits, pixels = counts[..., 0, :], counts[..., 1, :]
    total = pixels.sum(-1, keepdim=True)
    valid = (pixels >= min_share * total) & (pixels > 0)
    if not bool(valid.any()):
        return float("nan")
    return float((hits[valid] / pixels[valid]).mean())
