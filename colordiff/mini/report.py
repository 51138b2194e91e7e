"""The miniature's scoring: colorize the held-out photos with every model, score them with `colordiff evaluate`,
check that the U-Net reads its condition, and write the table (papers' layout), its JSON and a grid."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from colordiff.config import dotlist_value, load_config
from colordiff.io import atomic_write, write_image
from colordiff.mini.photos import read_rgb
from colordiff.mini.table import (
    METRICS,
    RGB_ROWS,
    ROWS,
    WORLD_ROWS,
    cell,
    gate_verdicts,
    goals,
    render_rows,
    render_targets,
)

__all__ = ["METRICS", "ROWS", "WORLD_ROWS", "report", "evaluate_folder"]  # the table's layout, read by the tests


@dataclass
class ScoreSet:
    """One set of photos every model is scored on: ground truths, gray inputs, where predictions and scores go."""

    name: str
    gt: Path
    gray: Path
    pred: Path  # pred/<row>/ single samples; pred/<row>_samples/ N samples per photo
    eval: Path  # eval/<row>.json, eval/<row>_mean.json
    captions: Path | None  # Des_g of its photos (the caption-prompt row), or None: no prompt row

    @property
    def names(self) -> list[str]:
        return sorted(p.name for p in self.gt.glob("*.png"))


def score_sets(lab) -> list[ScoreSet]:
    """The held-out photos of data_dir (photos/), then the second test set (test/) when lab.config.test_dir."""
    w, photos = lab.work, lab.work / "photos"
    sets = [ScoreSet("heldout", photos / "gt", photos / "gray", w / "pred", w / "eval", lab.captions_file())]
    if lab.config.test_dir:
        test, captions = w / "test", lab.config.test_captions
        sets.append(ScoreSet("test", test / "gt", test / "gray", test / "pred", test / "eval",
                            lab.repo / captions if captions else None))
    return sets


def _write_each(folder: Path, names: list[str], images) -> None:
    for name, rgb in zip(names, images, strict=True):
        write_image(folder / name, rgb.permute(1, 2, 0).clamp(0, 1).numpy())


def train_mean_ab(lab) -> torch.Tensor:
    """The training photos' mean a/b (2,), computed once and kept in eval/train_mean_ab.json."""
    from colordiff.color import split_luminance

    path = lab.work / "eval" / "train_mean_ab.json"
    if not path.exists():
        train = sorted((lab.work / "photos" / "train").glob("*.png"))
        mean = torch.stack([split_luminance(read_rgb(p)[None])[1].mean((-2, -1))[0] for p in train]).mean(0)
        with atomic_write(path) as tmp:
            tmp.write_text(json.dumps(mean.tolist()))
    return torch.tensor(json.loads(path.read_text()))


def baseline_predictions(lab, scores: ScoreSet, decoder: Path | None = None) -> dict[str, Path]:
    """gray input; the training photos' mean a/b under each photo's L; the ground truth through the base VAE
    (posterior mode, decoded, the photo's exact L kept); with `decoder` (a ColorDiff model folder) the ground truth
    through its luminance-aware decoder, the skips fed from the photo's gray (000 Eq.6): what Eq.7's training adds
    on latents that are right."""
    from diffusers import AutoencoderKL

    from colordiff.color import merge_luminance, split_luminance
    from colordiff.images import working_gray
    from colordiff.mini.base import encode_photo, pad_to_latent_cells
    from colordiff.models.luminance_decoder import LuminanceAwareAutoencoderKL

    out, names = {"gray": scores.gray}, scores.names
    folder = scores.pred / "mean_chroma"
    if not folder.exists():
        mean_ab = train_mean_ab(lab)
        gts = [read_rgb(scores.gt / n) for n in names]
        _write_each(folder, names, [merge_luminance(split_luminance(x[None])[0],
                                                    mean_ab[None, :, None, None].expand(1, 2, *x.shape[-2:]))[0]
                                    for x in gts])
    out["mean_chroma"] = folder
    folder = scores.pred / "vae_ceiling"
    if not folder.exists():
        vae = AutoencoderKL.from_pretrained(lab.work / "base", subfolder="vae", use_safetensors=True).eval()
        results = []
        with torch.no_grad():
            for n in names:
                x = read_rgb(scores.gt / n)  # (3, h, w)
                h, w = x.shape[-2:]
                recon = ((vae.decode(encode_photo(vae, x).mode()).sample + 1) / 2)[..., :h, :w]  # (1, 3, h, w)
                results.append(merge_luminance(split_luminance(x[None])[0], split_luminance(recon.clamp(0, 1))[1])[0])
        _write_each(folder, names, results)
    out["vae_ceiling"] = folder
    folder = scores.pred / "decoder_ceiling"
    if decoder is not None and not folder.exists():
        vae = LuminanceAwareAutoencoderKL.from_pretrained(decoder, subfolder="vae", use_safetensors=True).eval()
        results = []
        with torch.no_grad():
            for n in names:
                x = read_rgb(scores.gt / n)  # (3, h, w)
                h, w = x.shape[-2:]
                L = split_luminance(x[None])[0]  # (1, 1, h, w)
                gray = working_gray(L, (h, w))[0]  # (3, h, w): the model's own gray input for the photo's L
                _, features = vae.encode_with_features(pad_to_latent_cells(vae, gray) * 2 - 1)
                recon = (vae.decode_with_features(encode_photo(vae, x).mode(), features) + 1) / 2  # (1, 3, H, W)
                recon = recon[..., :h, :w]
                results.append(merge_luminance(L, split_luminance(recon.clamp(0, 1))[1])[0])
        _write_each(folder, names, results)
    if decoder is not None:
        out["decoder_ceiling"] = folder
    return out


def colorize_runs(lab, models: dict[str, Path], scores: ScoreSet) -> list[tuple[str, Path, list[str]]]:
    """(row, model, extra colorize keys) of every model row; the caption-prompt row (the set's Des_g captions, via
    --captions) after the decoder row when the set has captions; the decoded-RGB rows (RGB_ROWS) at the end."""
    runs = [(k, v, []) for k, v in models.items()]
    runs += [(row, models[model], ["keep_luminance=false"]) for row, model in RGB_ROWS.items() if model in models]
    if "unet_decoder" in models and scores.captions is not None:
        captions = scores.pred.parent / f"captions_{scores.name}.jsonl"
        if not captions.exists():
            keep = set(scores.names)
            lines = [line for line in scores.captions.read_text().splitlines()
                     if line.strip() and json.loads(line)["path"] in keep]
            with atomic_write(captions) as tmp:
                tmp.write_text("\n".join(lines) + "\n")
        runs.insert(list(models).index("unet_decoder") + 1,
                    ("unet_decoder_prompt", models["unet_decoder"],
                     [f"captions={dotlist_value(str(captions))}", "priors=caption"]))
    return runs


def colorize_models(lab, models: dict[str, Path], scores: ScoreSet) -> tuple[dict[str, Path], dict[str, Path]]:
    """Each model colorizes the set's gray photos through `colordiff colorize`: ({row: single samples},
    {row: N samples per photo}). With mean_samples N > 1 one run draws the N samples (pred/<row>_samples/,
    name_0 ... name_{N-1}) and the single-sample row is sample 0 of each photo; otherwise, and for the decoded-RGB
    rows (their gates are the L-kept rows'), one sample per photo."""
    single, several = {}, {}
    for row, model, extra in colorize_runs(lab, models, scores):
        n = 1 if row in RGB_ROWS else lab.config.mean_samples
        folder = scores.pred / row
        target = scores.pred / f"{row}_samples" if n > 1 else folder
        run_colorize_phase(lab, f"colorize {row} ({scores.name}, {max(n, 1)} per photo)", model, scores.gray,
                           target, [*extra, f"num_samples={max(n, 1)}"])
        if n > 1:
            lab.phase(f"{row} sample 0 ({scores.name})", folder / ".complete", lambda folder=folder, target=target: (
                [shutil.copyfile(target / f"{Path(name).stem}_0.png", _mkdir(folder) / name) for name in scores.names],
                (folder / ".complete").touch()))
            several[row] = target
        single[row] = folder
    return single, several


def _mkdir(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def run_colorize_phase(lab, label: str, model: Path, gray: Path, folder: Path, keys: list[str]) -> None:
    """One `colordiff colorize` of a folder, as a phase (colorize itself resumes; .complete marks a whole folder)."""
    from colordiff.colorize import ColorizeConfig, run_colorize

    c, marker = lab.config, folder / ".complete"

    def run():
        every = [f"model={dotlist_value(str(model))}", f"output_dir={dotlist_value(str(folder))}",
                 "local_files_only=true", *keys, *c.colorize_overrides]
        config = load_config(ColorizeConfig, [lab.repo / c.colorize_config], every)
        config.inputs = [str(gray)]
        if run_colorize(config) != 0:
            raise RuntimeError(f"{label}: some photos failed (see above)")
        marker.touch()

    lab.phase(label, marker, run)


def evaluate_rows(lab, scores: ScoreSet, predictions: dict[str, Path], samples: dict[str, Path]) -> dict[str, dict]:
    """Every row's scores on one set, single samples; a model row sampled N times also gets "mean_of_samples": the
    scores of the per-pixel mean of its N samples (`colordiff evaluate --samples N`)."""
    results = {}
    for row, folder in predictions.items():
        target = scores.eval / f"{row}.json"
        lab.phase(f"evaluate {row} ({scores.name})", target, lambda folder=folder, target=target: evaluate_folder(
            folder, scores.gt, target))
        results[row] = json.loads(target.read_text())
    for row, folder in samples.items():
        target = scores.eval / f"{row}_mean.json"
        lab.phase(f"evaluate {row} ({scores.name}, mean of {lab.config.mean_samples})", target,
                  lambda folder=folder, target=target: evaluate_folder(folder, scores.gt, target,
                                                                       samples=lab.config.mean_samples))
        results[row]["mean_of_samples"] = json.loads(target.read_text())
    return results


def evaluate_folder(pred: Path, gt: Path, target: Path, samples: int = 1) -> None:
    """`colordiff evaluate` at the photos' native size: colorfulness (ΔCF), PSNR, mean |Δab|, hue accuracy -> JSON +
    CSV; samples N > 1 scores the mean of the N samples per photo."""
    from colordiff.evaluate import EvalConfig, Protocol, run_evaluation, to_json, write_csv, write_text

    config = EvalConfig(pred=str(pred), gt=str(gt), protocol=Protocol(size=0), device="cpu", samples=samples,
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
    photos = [read_rgb(gt_dir / n) for n in names]
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


def score_set(lab, models: dict[str, Path], scores: ScoreSet) -> tuple[dict, dict[str, Path]]:
    """Colorize, evaluate and judge one set: ({"rows", "gates", "checks", "photos"}, {row: prediction folder})."""
    predictions = baseline_predictions(lab, scores, models.get("unet_decoder"))
    single, several = colorize_models(lab, models, scores)
    predictions.update(single)
    if lab.config.world_scenes and "unet_decoder" in models and scores.name == "heldout":
        predictions["unet_decoder_prompt_seg"] = colorize_world_masks(lab, models["unet_decoder"])
    results = evaluate_rows(lab, scores, predictions, several)
    rows = {}
    for row in (r for r in ROWS if r in results):
        rows[row] = {k: results[row].get(k) for k in METRICS + ["colorfulness_gt"]}
        if "mean_of_samples" in results[row]:
            mean = results[row]["mean_of_samples"]
            rows[row]["mean_of_samples"] = {k: mean.get(k) for k in METRICS} | {"samples": lab.config.mean_samples}
    gates = gate_verdicts(rows)
    return {"rows": rows, "gates": gates, "checks": goals(rows, gates), "photos": scores.names}, predictions


def report(lab, models: dict[str, Path]) -> dict:
    """Score every set (the held-out photos, then the second test set), write table.json, table.md and a grid per
    set (grid.png; test/grid.png)."""
    sets, summary = score_sets(lab), {}
    for scores in sets:
        result, predictions = score_set(lab, models, scores)
        columns = {row: predictions[row] for row in ROWS if row in predictions}
        grid(scores.gt.parent.parent / "grid.png" if scores.name == "heldout" else scores.gt.parent / "grid.png",
             scores.gt, scores.names, columns)
        if scores.name == "heldout":
            summary.update(rows=result["rows"], gates=result["gates"], checks=result["checks"],
                           heldout=result["photos"])
            main_predictions = columns
        else:
            summary.setdefault("test_sets", {})[scores.name] = result | {"data_dir": lab.config.test_dir}
    gt_dir, names = sets[0].gt, sets[0].names
    if "unet_only" in models:
        summary["condition_check"] = condition_check(models["unet_only"], gt_dir, names)
        from colordiff.mini.world_report import learning_curve, save_json

        target = sets[0].eval / "learning_curve.json"  # the U-Net's held-out curve: a point per checkpoint
        lab.phase("learning curve", target, lambda: save_json(target, learning_curve(
            lab.work / "unet", models["unet_only"], sets[0].gray, sets[0].gt, colorize_settings(lab))))
        summary["learning_curve"] = json.loads(target.read_text())
    if lab.config.world_scenes:
        summary.update(world_scores(lab, main_predictions))
        from colordiff.mini.world_report import world_goals

        summary["checks"] |= world_goals(summary)
    summary["mean_samples"] = lab.config.mean_samples
    summary["base"] = json.loads((lab.work / "base" / "base_report.json").read_text())
    with atomic_write(lab.work / "table.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=1))
    with atomic_write(lab.work / "table.md") as tmp:
        tmp.write_text(render_table(summary))
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


def world_scores(lab, predictions: dict[str, Path]) -> dict:
    """Hue accuracy per shape of every row."""
    from colordiff.mini.world_report import class_accuracy

    photos = lab.work / "photos"
    return {"class_accuracy": {row: class_accuracy(folder, photos / "gt", photos / "meta")
                               for row, folder in predictions.items()}}


def render_table(summary: dict) -> str:
    """table.md: the held-out photos' table (with the condition check, the world's extra lines, the base VAE), the
    second test set's table, then the targets of each set."""
    rows, samples = summary["rows"], summary.get("mean_samples") or 0
    gt_cf = next((r["colorfulness_gt"] for r in rows.values() if r.get("colorfulness_gt") is not None), None)
    lines = [f"Held-out photos ({len(summary['heldout'])}): {', '.join(summary['heldout'])}; ground-truth CF "
             f"{cell(gt_cf)}.\n", *render_rows(rows, summary["gates"], samples)]
    if "condition_check" in summary:
        c = summary["condition_check"]
        lines += ["", f"Held-out loss (its eps or v target) of the trained U-Net: {c['eps_loss_own_condition']:.4f} "
                  f"with the photo's own z_c, {c['eps_loss_other_condition']:.4f} with another photo's "
                  f"(ratio {c['ratio']:.3f})."]
    from colordiff.mini.world_report import render_curve, render_world

    if "class_accuracy" in summary:
        lines += render_world(summary)
    lines += render_curve(summary.get("learning_curve") or [])
    for name, result in summary.get("test_sets", {}).items():
        test_cf = next((r["colorfulness_gt"] for r in result["rows"].values()), None)
        lines += ["", f"**Second test set `{name}`**: {len(result['photos'])} color photos of {result['data_dir']}, "
                  f"never trained on; ground-truth CF {cell(test_cf)}.",
                  *render_rows(result["rows"], result["gates"], samples)]
    base = summary["base"]
    lines += ["", f"Base VAE: held-out reconstruction {base['heldout_psnr']:.2f} dB, colorfulness "
              f"{base['colorfulness_ratio']:.2f} x the ground truth's.", "",
              f"Gates: conditional colors = the mean of {samples or 'N'} samples beats the gray input and the mean "
              "chroma on PSNR and mean ‖Δab‖; right hues = single-sample hue accuracy >= the mean chroma's + 0.1, "
              "colorfulness 0.5-1.5x the truth's (docs/evaluation.md).", "", "Targets (held-out photos):", "",
              *render_targets(summary["checks"])]
    for name, result in summary.get("test_sets", {}).items():
        lines += ["", f"Targets (`{name}`):", "", *render_targets(result["checks"])]
    return "\n".join(lines) + "\n"


def grid(path: Path, gt_dir: Path, names: list[str], columns: dict[str, Path]) -> None:
    """One row per held-out photo: each column's prediction, then the ground truth."""
    rows = []
    for name in names:
        cells = [read_rgb(folder / name) for folder in columns.values()] + [read_rgb(gt_dir / name)]
        h = min(c.shape[-2] for c in cells)
        cells = [torch.nn.functional.interpolate(c[None], size=(h, round(c.shape[-1] * h / c.shape[-2])),
                                                 mode="bilinear", antialias=True)[0] for c in cells]
        rows.append(torch.cat([torch.nn.functional.pad(c, (2, 2, 2, 2), value=1.0) for c in cells], -1))
    width = max(r.shape[-1] for r in rows)
    sheet = torch.cat([torch.nn.functional.pad(r, (0, width - r.shape[-1]), value=1.0) for r in rows], -2)
    write_image(path, sheet.permute(1, 2, 0).clamp(0, 1).numpy())
    with atomic_write(path.with_suffix(".txt")) as tmp:
        tmp.write_text("columns: " + " | ".join([*columns, "ground truth"]) + "\nrows: " + ", ".join(names) + "\n")
