"""The miniature's table: its rows, the two gates every row is judged by, the run's targets and the Markdown.

The gates (this project's measures, docs/evaluation.md "Gates"):
- conditional colors: the per-pixel mean of N samples (a/b averaged, L kept) beats both the gray input and the
  training set's mean-chroma fill on PSNR and on mean ‖Δab‖. A single sample of even a perfect sampler carries the
  conditional variance twice into its squared error, so single-sample PSNR is reported, not gated; only colors that
  depend on the photo let the mean beat the best constant guess.
- right hues: a single sample's balanced hue accuracy at least 0.1 above the mean-chroma fill's, with colorfulness
  0.5-1.5x the ground truth's.
"""

from __future__ import annotations

import math

# row key -> (section, label); the order of the table and of the grid's columns
ROWS = {
    "gray": ("baselines", "the gray input"),
    "mean_chroma": ("baselines", "mean training chroma everywhere"),
    "untrained": ("baselines", "untrained model (init-model output)"),
    "vae_ceiling": ("baselines", "ground truth through the VAE (the ceiling)"),
    "decoder_ceiling": ("baselines", "ground truth through the luminance-aware decoder (its ceiling)"),
    "unet_only": ("paper 000 Table 2", "U-Net only (w/o luminance-aware decoder)"),
    "unet_decoder": ("paper 000 Table 2", "+ luminance-aware decoder (w/o high-level semantics)"),
    "unet_decoder_prompt": ("paper 000 Table 2", "+ priors: the caption prompt (full model)"),
    "unet_decoder_prompt_seg": ("paper 000 Table 2", "+ segmentation guidance on the exact masks (world only)"),
    "unet_only_rgb": ("paper 000 Table 2", "U-Net only, its decoded RGB (the input's L not kept)"),
    "unet_decoder_rgb": ("paper 000 Table 2", "+ luminance-aware decoder, its decoded RGB (the input's L not kept)"),
    "seada_ii": ("paper 001 Table 2", "stage II only"),
    "seada_i_ii": ("paper 001 Table 2", "stages I + II"),
    "seada_i_ii_iii": ("paper 001 Table 2", "stages I + II + III (full model)"),
}
# the decoder ablation as paper 000 scores it: each model's own RGB, one sample per photo. Every other row keeps the
# input's exact L, which leaves the decoder only the a/b to change; Eq.6-7 add the gray's structure to the decoded RGB
RGB_ROWS = {"unet_only_rgb": "unet_only", "unet_decoder_rgb": "unet_decoder"}
WORLD_ROWS = {"unet_decoder_prompt_seg"}  # rows only the color-rule world has (its exact instance masks)
DETERMINISTIC_ROWS = {"gray", "mean_chroma", "vae_ceiling", "decoder_ceiling"}  # no sampling: the mean of N is the row
METRICS = ["colorfulness", "delta_cf", "delta_cf_per_image", "psnr", "delta_ab", "hue_accuracy"]
HUE_MARGIN = 0.1  # right hues: balanced hue accuracy at least the mean-chroma fill's + this
COLORFULNESS_RANGE = (0.5, 1.5)  # right hues: colorfulness within these multiples of the ground truth's
GATES = ("conditional colors", "right hues")


def mean_scores(rows: dict, row: str) -> dict | None:
    """The scores of the mean of N samples of a row: its "mean_of_samples" entry, or the row itself for a row that
    does not sample (gray, mean chroma, VAE ceiling); None when not scored."""
    values = rows.get(row)
    if values is None:
        return None
    return values if row in DETERMINISTIC_ROWS else values.get("mean_of_samples")


def conditional_colors(mean: dict | None, gray: dict | None, fill: dict | None) -> bool | None:
    """The conditional-colors gate: the mean of N samples has a higher PSNR and a lower mean ‖Δab‖ than the gray
    input and the mean-chroma fill. None when a number is missing."""
    if mean is None or gray is None or fill is None:
        return None
    values = [d.get(k) for d in (mean, gray, fill) for k in ("psnr", "delta_ab")]
    if any(v is None for v in values):
        return None
    return all(mean["psnr"] > d["psnr"] and mean["delta_ab"] < d["delta_ab"] for d in (gray, fill))


def right_hues(single: dict | None, fill: dict | None) -> bool | None:
    """The right-hues gate: a single sample's balanced hue accuracy >= the mean-chroma fill's + 0.1, and its
    colorfulness 0.5-1.5x the ground truth's. None when a number is missing."""
    if single is None or fill is None:
        return None
    acc, fill_acc = single.get("hue_accuracy"), fill.get("hue_accuracy")
    cf, cf_gt = single.get("colorfulness"), single.get("colorfulness_gt")
    if None in (acc, fill_acc, cf, cf_gt) or not cf_gt:
        return None
    low, high = COLORFULNESS_RANGE
    return acc >= fill_acc + HUE_MARGIN and low <= cf / cf_gt <= high


def gate_verdicts(rows: dict) -> dict[str, dict[str, bool | None]]:
    """{row: {"conditional colors": verdict, "right hues": verdict}} for every row of one test set."""
    gray, fill = mean_scores(rows, "gray"), rows.get("mean_chroma")
    return {row: {"conditional colors": conditional_colors(mean_scores(rows, row), gray, fill),
                  "right hues": right_hues(rows[row], fill)} for row in rows}


def goals(rows: dict, gates: dict) -> dict:
    """The miniature's targets on one test set, each True / False (None when a row is missing): the full ColorDiff
    model passes both gates, the decoder row beats U-Net only (with the input's L kept, and on the decoded RGB) and
    SeAda I+II+III beats stage II only on PSNR."""
    def beats(row, other):
        a, b = rows.get(row, {}).get("psnr"), rows.get(other, {}).get("psnr")
        return None if a is None or b is None else a > b

    full = next((r for r in ("unet_decoder_prompt", "unet_decoder", "unet_only") if r in rows), "unet_decoder")
    out = {f"{full} passes the {gate} gate": gates.get(full, {}).get(gate) for gate in GATES}
    out["decoder row beats U-Net-only row on PSNR"] = beats("unet_decoder", "unet_only")
    out["decoder row beats U-Net-only row on PSNR of the decoded RGB (L not kept)"] = beats("unet_decoder_rgb",
                                                                                           "unet_only_rgb")
    out["SeAda I+II+III beats stage II only on PSNR"] = beats("seada_i_ii_iii", "seada_ii")
    return out


def cell(value, digits: int = 2) -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.{digits}f}"


def verdict(ok: bool | None) -> str:
    return "pass" if ok else "fail" if ok is not None else "-"


def render_rows(rows: dict, gates: dict, samples: int) -> list[str]:
    """The Markdown table of one test set: a section per paper, single-sample scores, the mean of N samples' PSNR
    and mean ‖Δab‖, and the two gate verdicts."""
    lines, section = [], None
    n = samples if samples > 1 else "N"  # mean_samples 0 or 1: the mean-of-N columns stay empty
    for row, (sec, label) in ROWS.items():
        if row not in rows:
            continue
        if sec != section:
            section = sec
            lines += ["", f"**{sec}**", "", "| method | CF | ΔCF | ΔCF per image | PSNR | mean ‖Δab‖ | hue acc. | "
                      f"PSNR, mean of {n} | mean ‖Δab‖, mean of {n} | conditional colors | right hues |",
                      "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
        r, mean = rows[row], mean_scores(rows, row) or {}
        lines.append(f"| {label} | {cell(r['colorfulness'])} | {cell(r['delta_cf'])} | "
                     f"{cell(r['delta_cf_per_image'])} | {cell(r['psnr'])} | {cell(r['delta_ab'])} | "
                     f"{cell(r.get('hue_accuracy'))} | {cell(mean.get('psnr'))} | {cell(mean.get('delta_ab'))} | "
                     f"{verdict(gates[row]['conditional colors'])} | {verdict(gates[row]['right hues'])} |")
    return lines


def render_targets(checks: dict) -> list[str]:
    return [f"- {'met' if ok else 'NOT met' if ok is not None else 'not run'}: {goal}" for goal, ok in checks.items()]
