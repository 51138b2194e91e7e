"""The miniature's scoring: colorize the held-out photos with every model, score them with `colordiff evaluate`,
check that the U-Net reads its condition, and write the table (papers' layout), its JSON and a grid."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from colordiff.config import dotlist_value, load_config
from colordiff.io import atomic_write, read_image, write_image

# row key -> (section, label); the order of the table and of the grid's columns
ROWS = {
    "gray": ("baselines", "the gray input"),
    "mean_chroma": ("baselines", "mean training chroma everywhere"),
    "untrained": ("baselines", "untrained model (init-model output)"),
    "vae_ceiling": ("baselines", "ground truth through the VAE (the ceiling)"),
    "unet_only": ("paper 000 Table 2", "U-Net only (w/o luminance-aware decoder)"),
    "unet_decoder": ("paper 000 Table 2", "+ luminance-aware decoder (w/o high-level semantics)"),
    "unet_decoder_prompt": ("paper 000 Table 2", "+ priors: the caption prompt (full model)"),
    "unet_decoder_prompt_seg": ("paper 000 Table 2", "+ segmentation guidance on the exact masks (world only)"),
    "seada_ii": ("paper 001 Table 2", "stage II only"),
    "seada_i_ii": ("paper 001 Table 2", "stages I + II"),
    "seada_i_ii_iii": ("paper 001 Table 2", "stages I + II + III (full model)"),
}
WORLD_ROWS = {"unet_decoder_prompt_seg"}  # rows only the color-rule world has (its exact instance masks)
METRICS = ["colorfulness", "delta_cf", "delta_cf_per_image", "psnr", "delta_ab", "hue_accuracy"]


def _rgb(path: Path) -> torch.Tensor:
    return torch.from_numpy(read_image(path).rgb).permute(2, 0, 1)  # (3, H, W) in [0, 1]


def _write_each(folder: Path, names: list[str], images) -> None:
    for name, rgb in zip(names, images, strict=True):
        write_image(folder / name, rgb.permute(1, 2, 0).clamp(0, 1).numpy())


def baseline_predictions(lab, gt_dir: Path, names: list[str]) -> dict[str, Path]:
    """gray input; the training photos' mean a/b under each photo's L; the ground truth through the base VAE
    (posterior mode, decoded, the photo's exact L kept)."""
    from diffusers import AutoencoderKL

    from colordiff.color import merge_luminance, split_luminance
    from colordiff.mini.base import encode_photo

    out, photos = {}, lab.work / "photos"
    gray = photos / "gray"
    out["gray"] = gray
    train = [_rgb(p) for p in sorted((photos / "train").glob("*.png"))]
    mean_ab = torch.stack([split_luminance(x[None])[1].mean((-2, -1))[0] for x in train]).mean(0)  # (2,)
    folder = lab.work / "pred" / "mean_chroma"
    if not folder.exists():
        gts = [_rgb(gt_dir / n) for n in names]
        _write_each(folder, names, [merge_luminance(split_luminance(x[None])[0],
                                                    mean_ab[None, :, None, None].expand(1, 2, *x.shape[-2:]))[0]
                                    for x in gts])
    out["mean_chroma"] = folder
    folder = lab.work / "pred" / "vae_ceiling"
    if not folder.exists():
        vae = AutoencoderKL.from_pretrained(lab.work / "base", subfolder="vae", use_safetensors=True).eval()
        results = []
        with torch.no_grad():
            for n in names:
                x = _rgb(gt_dir / n)  # (3, h, w)
                h, w = x.shape[-2:]
                recon = ((vae.decode(encode_photo(vae, x).mode()).sample + 1) / 2)[..., :h, :w]  # (1, 3, h, w)
                results.append(merge_luminance(split_luminance(x[None])[0], split_luminance(recon.clamp(0, 1))[1])[0])
        _write_each(folder, names, results)
    out["vae_ceiling"] = folder
    return out


def colorize_models(lab, models: dict[str, Path]) -> dict[str, Path]:
    """Each model colorizes the held-out gray photos through `colordiff colorize` (the prompt row: --captions)."""
    c, out = lab.config, {}
    gray = lab.work / "photos" / "gray"
    heldout_captions = lab.work / "photos" / "captions_heldout.jsonl"
    runs = [(k, v, []) for k, v in models.items()]
    if "unet_decoder" in models:
        runs.insert(list(models).index("unet_decoder") + 1,
                    ("unet_decoder_prompt", models["unet_decoder"], [f"captions={dotlist_value(str(heldout_captions))}",
                                                                    "priors=caption"]))
    for row, model, extra in runs:
        folder = lab.work / "pred" / row
        if extra and not heldout_captions.exists():
            keep = {p.name for p in gray.glob("*.png")}
            lines = [line for line in lab.captions_file().read_text().splitlines()
                     if line.strip() and json.loads(line)["path"] in keep]
            with atomic_write(heldout_captions) as tmp:
                tmp.write_text("\n".join(lines) + "\n")
        marker = folder / ".complete"  # colorize itself resumes; the marker says the whole folder is done

        def run(folder=folder, model=model, extra=extra, marker=marker, row=row):
            from colordiff.colorize import ColorizeConfig, run_colorize

            keys = [f"model={dotlist_value(str(model))}", f"output_dir={dotlist_value(str(folder))}",
                    "local_files_only=true", *extra, *c.colorize_overrides]
            config = load_config(ColorizeConfig, [lab.repo / c.colorize_config], keys)
            config.inputs = [str(gray)]
            if run_colorize(config) != 0:
                raise RuntimeError(f"colorize {row}: some held-out photos failed (see above)")
            marker.touch()

        lab.phase(f"colorize {row}", marker, run)
        out[row] = folder
    return out


def evaluate_rows(lab, predictions: dict[str, Path]) -> dict[str, dict]:
    results = {}
    for row, folder in predictions.items():
        target = lab.work / "eval" / f"{row}.json"
        lab.phase(f"evaluate {row}", target, lambda folder=folder, target=target: evaluate_folder(
            folder, lab.work / "photos" / "gt", target))
        results[row] = json.loads(target.read_text())
    return results


def evaluate_folder(pred: Path, gt: Path, target: Path) -> None:
    """`colordiff evaluate` at the photos' native size: colorfulness (ΔCF), PSNR, mean |Δab|, hue accuracy -> JSON +
    CSV."""
    from colordiff.evaluate import EvalConfig, Protocol, run_evaluation, to_json, write_csv, write_text

    config = EvalConfig(pred=str(pred), gt=str(gt), protocol=Protocol(size=0), device="cpu",
                        metrics=["colorfulness", "psnr", "delta_ab", "hue_accuracy"])
    with torch.inference_mode():
        results, rows = run_evaluation(config)
    if results["n_failed"]:
        raise RuntimeError(f"evaluate {pred}: {results['failed'][0]}")
    write_csv(target.with_suffix(".csv"), rows)
    write_text(target, to_json(results))


@torch.no_grad()
def condition_check(model: Path, gt_dir: Path, names: list[str], seed: int = 0) -> dict:
    """Held-out loss of the trained U-Net (eps, or v for a v-prediction model) with each photo's own z_c and with
    another photo's z_c (rolled by one): the condition is used when the first is well below the second. Same noise,
    timesteps and prompt ("")."""
    from colordiff.color import rgb_to_gray
    from colordiff.pipelines import load_pipeline

    pipe = load_pipeline(str(model), local_files_only=True)
    photos = [_rgb(gt_dir / n) for n in names]
    side = min(min(p.shape[-2:]) for p in photos) // 16 * 16  # a square every photo holds; latents of whole cells
    x = torch.stack([p[:, :side, :side] for p in photos])  # (N, 3, side, side): one shape, one batch
    scale = pipe.vae.config.scaling_factor
    z0 = pipe.vae.encode(x * 2 - 1).latent_dist.mode() * scale
    zc, _ = pipe.encode_gray(rgb_to_gray(x))
    emb = pipe.encode_prompt([""] * len(x))
    alphas = pipe.scheduler.alphas_cumprod  # the model's own schedule (zero terminal SNR when it was trained so)
    v_target = pipe.scheduler.config.prediction_type == "v_prediction"
    generator = torch.Generator().manual_seed(seed)
    own, other = [], []
    for t in torch.linspace(50, 950, 10).long():
        noise = torch.randn(z0.shape, generator=generator)
        zt = alphas[t].sqrt() * z0 + (1 - alphas[t]).sqrt() * noise
        steps = torch.full((len(x),), int(t))
        for cond, bucket in ((zc, own), (zc.roll(1, 0), other)):
            prediction = pipe.unet(zt, steps, emb, condition_latents=cond).sample
            target = alphas[t].sqrt() * noise - (1 - alphas[t]).sqrt() * z0 if v_target else noise
            bucket.append(float((prediction - target).square().mean()))
    return {"eps_loss_own_condition": float(np.mean(own)), "eps_loss_other_condition": float(np.mean(other)),
            "ratio": float(np.mean(own) / np.mean(other))}


def report(lab, models: dict[str, Path]) -> dict:
    gt_dir = lab.work / "photos" / "gt"
    names = sorted(p.name for p in gt_dir.glob("*.png"))
    predictions = baseline_predictions(lab, gt_dir, names)
    predictions.update(colorize_models(lab, models))
    world = bool(lab.config.world_scenes)
    if world and "unet_decoder" in models:
        predictions["unet_decoder_prompt_seg"] = colorize_world_masks(lab, models["unet_decoder"])
    results = evaluate_rows(lab, predictions)
    summary = {"rows": {row: {k: results[row].get(k) for k in METRICS + ["colorfulness_gt"]}
                        for row in ROWS if row in results}}
    if "unet_only" in models:
        summary["condition_check"] = condition_check(models["unet_only"], gt_dir, names)
    if world:
        summary.update(world_scores(lab, {row: predictions[row] for row in ROWS if row in predictions}, models))
    summary["checks"] = goals(summary["rows"]) | (world_goals(summary) if world else {})
    summary["base"] = json.loads((lab.work / "base" / "base_report.json").read_text())
    summary["heldout"] = names
    with atomic_write(lab.work / "table.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=1))
    with atomic_write(lab.work / "table.md") as tmp:
        tmp.write_text(render_table(summary))
    grid(lab.work / "grid.png", gt_dir, names, {row: predictions[row] for row in ROWS if row in predictions})
    return summary


def colorize_settings(lab):
    """The sampler settings of `colordiff colorize` in the lab (colorize_config + colorize_overrides), for the rows
    the lab samples through the pipeline itself."""
    from colordiff.colorize import ColorizeConfig

    return load_config(ColorizeConfig, [lab.repo / lab.config.colorize_config],
                       ["model=unused", "output_dir=unused", *lab.config.colorize_overrides])


def colorize_world_masks(lab, model: Path) -> Path:
    """The world's segmentation-guided row: the full model, caption prompt and the generator's exact masks."""
    from colordiff.mini.world_report import colorize_with_masks

    folder, photos = lab.work / "pred" / "unet_decoder_prompt_seg", lab.work / "photos"
    marker = folder / ".complete"
    lab.phase("colorize unet_decoder_prompt_seg", marker, lambda: (
        colorize_with_masks(model, photos / "gray", photos / "meta", folder, colorize_settings(lab)), marker.touch()))
    return folder


def world_scores(lab, predictions: dict[str, Path], models: dict[str, Path]) -> dict:
    """Hue accuracy per shape of every row, and the ColorDiff U-Net's learning curve."""
    from colordiff.mini.world_report import class_accuracy, learning_curve, save_json

    photos, out = lab.work / "photos", {}
    out["class_accuracy"] = {row: class_accuracy(folder, photos / "gt", photos / "meta")
                             for row, folder in predictions.items()}
    target = lab.work / "eval" / "learning_curve.json"
    if "unet_only" in models:
        lab.phase("learning curve", target, lambda: save_json(target, learning_curve(
            lab.work / "unet", models["unet_only"], photos / "gray", photos / "gt", colorize_settings(lab))))
        out["learning_curve"] = json.loads(target.read_text())
    return out


def world_goals(summary: dict) -> dict:
    """The color-rule world's targets (docs/miniature.md): every one is met by a recipe that learns the rules."""
    rows, classes = summary["rows"], summary.get("class_accuracy", {})
    full, seg = rows.get("unet_decoder_prompt", {}), rows.get("unet_decoder_prompt_seg", {})
    gray_psnr = rows.get("gray", {}).get("psnr")
    ring = lambda row: classes.get(row, {}).get("ring")  # noqa: E731
    known = lambda *v: None not in v  # noqa: E731
    return {
        "full model hue accuracy >= 0.9": known(full.get("hue_accuracy")) and full["hue_accuracy"] >= 0.9,
        "full model PSNR >= gray + 6 dB": known(full.get("psnr"), gray_psnr) and full["psnr"] >= gray_psnr + 6,
        "ring right >= 0.9 with its caption": known(ring("unet_decoder_prompt")) and ring("unet_decoder_prompt") >= 0.9,
        "ring about chance (0.3-0.7) without a caption": known(ring("unet_decoder"))
        and 0.3 <= ring("unet_decoder") <= 0.7,
        "exact-mask segmentation guidance not worse (hue accuracy within 0.02)": known(
            seg.get("hue_accuracy"), full.get("hue_accuracy")) and seg["hue_accuracy"] >= full["hue_accuracy"] - 0.02,
    }


def goals(rows: dict) -> dict:
    """The miniature's targets, each True / False (None when a row is missing)."""
    def get(row, key):
        return rows.get(row, {}).get(key)

    def beats(row, others, key, higher):
        v = get(row, key)
        if v is None or any(get(o, key) is None for o in others):
            return None
        return all((v > get(o, key)) if higher else (v < get(o, key)) for o in others)

    baselines = ["gray", "mean_chroma", "untrained"]
    full = "unet_decoder" if "unet_decoder" in rows else "unet_only"
    cf, cf_gt = get(full, "colorfulness"), get(full, "colorfulness_gt")
    return {
        f"{full} beats every baseline on PSNR": beats(full, baselines, "psnr", True),
        f"{full} beats every baseline on mean |Δab|": beats(full, baselines, "delta_ab", False),
        f"{full} colorfulness within 0.5x-1.5x the ground truth's": None if cf is None else 0.5 <= cf / cf_gt <= 1.5,
        "decoder row beats U-Net-only row on PSNR": beats("unet_decoder", ["unet_only"], "psnr", True),
        "SeAda I+II+III beats stage II only on PSNR": beats("seada_i_ii_iii", ["seada_ii"], "psnr", True),
    }


def _cell(value, digits: int = 2) -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.{digits}f}"


def render_table(summary: dict) -> str:
    rows, lines, section = summary["rows"], [], None
    gt_cf = next((r["colorfulness_gt"] for r in rows.values() if r.get("colorfulness_gt") is not None), None)
    lines.append(f"Held-out photos ({len(summary['heldout'])}): {', '.join(summary['heldout'])}; ground-truth CF "
                 f"{_cell(gt_cf)}.\n")
    for row, (sec, label) in ROWS.items():
        if row not in rows:
            continue
        if sec != section:
            section = sec
            lines += ["", f"**{sec}**", "", "| method | CF | ΔCF | ΔCF per image | PSNR | mean ‖Δab‖ | hue acc. |",
                      "|---|---:|---:|---:|---:|---:|---:|"]
        r = rows[row]
        lines.append(f"| {label} | {_cell(r['colorfulness'])} | {_cell(r['delta_cf'])} | "
                     f"{_cell(r['delta_cf_per_image'])} | {_cell(r['psnr'])} | {_cell(r['delta_ab'])} | "
                     f"{_cell(r.get('hue_accuracy'))} |")
    if "condition_check" in summary:
        c = summary["condition_check"]
        lines += ["", f"Held-out loss (its eps or v target) of the trained U-Net: {c['eps_loss_own_condition']:.4f} "
                  f"with the photo's own z_c, {c['eps_loss_other_condition']:.4f} with another photo's "
                  f"(ratio {c['ratio']:.3f})."]
    if "class_accuracy" in summary:
        from colordiff.mini.world_report import render_world

        lines += render_world(summary)
    base = summary["base"]
    lines += ["", f"Base VAE: held-out reconstruction {base['heldout_psnr']:.2f} dB, colorfulness "
              f"{base['colorfulness_ratio']:.2f} x the ground truth's.", "", "Targets:", ""]
    lines += [f"- {'met' if ok else 'NOT met' if ok is not None else 'not run'}: {goal}"
              for goal, ok in summary["checks"].items()]
    return "\n".join(lines) + "\n"


def grid(path: Path, gt_dir: Path, names: list[str], columns: dict[str, Path]) -> None:
    """One row per held-out photo: each column's prediction, then the ground truth."""
    rows = []
    for name in names:
        cells = [_rgb(folder / name) for folder in columns.values()] + [_rgb(gt_dir / name)]
        h = min(c.shape[-2] for c in cells)
        cells = [torch.nn.functional.interpolate(c[None], size=(h, round(c.shape[-1] * h / c.shape[-2])),
                                                 mode="bilinear", antialias=True)[0] for c in cells]
        rows.append(torch.cat([torch.nn.functional.pad(c, (2, 2, 2, 2), value=1.0) for c in cells], -1))
    width = max(r.shape[-1] for r in rows)
    sheet = torch.cat([torch.nn.functional.pad(r, (0, width - r.shape[-1]), value=1.0) for r in rows], -2)
    write_image(path, sheet.permute(1, 2, 0).clamp(0, 1).numpy())
    with atomic_write(path.with_suffix(".txt")) as tmp:
        tmp.write_text("columns: " + " | ".join([*columns, "ground truth"]) + "\nrows: " + ", ".join(names) + "\n")
