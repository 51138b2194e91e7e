"""The color-rule world's own scores (scripts/miniature.py with configs/mini/world.yaml): hue accuracy per shape from
the generator's instance maps, the full model with segmentation guidance on the exact masks, and the learning curve
of the ColorDiff U-Net (held-out balanced hue accuracy of each checkpoint)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from colordiff import hue
from colordiff import metrics as M
from colordiff.io import read_image, write_image
from colordiff.mini.world import read_instances, read_world

CLASSES = ["disk", "square", "triangle", "star", "ring", "dotted ground", "striped ground", "sky"]
GROUND_OF = {"teal": "dotted ground", "brown": "striped ground"}


def _uint8(path: Path) -> torch.Tensor:
    return M.as_uint8_batch((read_image(path).rgb * 255).round().astype(np.uint8))  # (1, 3, H, W)


def class_maps(meta: Path, record: dict) -> dict[str, torch.Tensor]:
    """{class: (1, H, W) bool} of one held-out scene (its world.jsonl record): the visible pixels of each shape,
    ground texture and the sky."""
    ids = torch.from_numpy(read_instances(meta, record["path"]).astype(np.int64))
    maps = {}
    for inst in record["instances"]:
        label = GROUND_OF[inst["color"]] if inst["label"] == "ground" else inst["label"]
        maps[label] = maps.get(label, torch.zeros_like(ids, dtype=torch.bool)) | (ids == inst["id"])
    return {k: v[None] for k, v in maps.items()}


def class_accuracy(pred_dir: Path, gt_dir: Path, meta: Path) -> dict[str, float]:
    """Hue accuracy per class (balanced over the class's hue sectors: the ring's two colors weigh the same), pooled
    over the held-out scenes; and "all": the balanced hue accuracy of the whole scenes."""
    counts = {c: torch.zeros(2, 6, dtype=torch.float64) for c in [*CLASSES, "all"]}
    for name, record in sorted(read_world(meta).items()):
        pred, gt = _uint8(pred_dir / name), _uint8(gt_dir / name)
        counts["all"] += hue.hue_sector_counts(pred, gt)[0]
        for label, mask in class_maps(meta, record).items():
            counts[label] += hue.hue_sector_counts(pred, gt, mask=mask)[0]
    return {c: hue.balanced_hue_accuracy(v) for c, v in counts.items()}


def exact_priors(meta: Path, record: dict):
    """The ImagePriors of a held-out scene (its world.jsonl record) as a perfect prior generator would give them: the
    color caption and one instance per visible object (mask and shape name; the ground and sky are not instances)."""
    from colordiff.semantics import ImagePriors, Instances

    ids = torch.from_numpy(read_instances(meta, record["path"]).astype(np.int64))
    objects = [i for i in record["instances"][2:] if bool((ids == i["id"]).any())]
    masks = torch.stack([ids == i["id"] for i in objects]) if objects else torch.zeros(0, *ids.shape, dtype=torch.bool)
    return ImagePriors(caption=record["caption_color"],
                       instances=Instances(masks, [i["label"] for i in objects], [1.0] * len(objects)))


def held_out_sampler(model: Path, gray_dir: Path, names: list[str], settings):
    """(pipeline, sample): sample(**call_arguments) colorizes the gray inputs `names` through the model's pipeline with
    `colordiff colorize`'s seeds and sampler settings, returning float RGB arrays (H, W, 3)."""
    pipe = quiet_pipeline(model)
    return pipe, pipeline_sampler(pipe, gray_dir, names, settings)


def quiet_pipeline(model: Path):
    """The model folder's pipeline, local files only, without a progress bar."""
    from colordiff.pipelines import load_pipeline

    pipe = load_pipeline(str(model), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pipeline_sampler(pipe, gray_dir: Path, names: list[str], settings):
    """sample(**call_arguments): the gray inputs `names` through `pipe` as held_out_sampler's sample."""
    from colordiff.colorize_jobs import sample_seed

    images = [read_image(gray_dir / n).rgb for n in names]

    def sample(**call_arguments) -> list[np.ndarray]:
        generators = [torch.Generator().manual_seed(sample_seed(settings.seed, Path(n), 0)) for n in names]
        return pipe(images, num_inference_steps=settings.steps, guidance_scale=settings.guidance_scale,
                    generator=generators, resolution=settings.resolution, output_type="np", **call_arguments).images

    return sample


def colorize_with_masks(model: Path, gray_dir: Path, meta: Path, out_dir: Path, settings) -> None:
    """The full model with the caption prompt and segmentation guidance (000 Eq.4-5) on the exact instance masks,
    through the pipeline with precomputed priors; the same seeds and sampler settings as `colordiff colorize`."""
    records = sorted(read_world(meta).items())
    names = [name for name, _ in records]
    _, sample = held_out_sampler(model, gray_dir, names, settings)
    images = sample(priors=[exact_priors(meta, record) for _, record in records], seg_strength=settings.seg_strength)
    for name, rgb in zip(names, images, strict=True):
        write_image(out_dir / name, rgb)


def learning_curve(run_dir: Path, model: Path, gray_dir: Path, gt_dir: Path, settings) -> list[dict]:
    """Held-out balanced hue accuracy and PSNR of every checkpoint of a U-Net run (its EMA weights when kept), sampled
    as `colordiff colorize` samples (no prompt), loaded into the exported model folder's pipeline. Photos are sampled
    in batches of one size (landscape and portrait apart)."""
    from safetensors.torch import load_file

    from colordiff.training.checkpoint import checkpoint_step, list_checkpoints

    gts = {p.name: _uint8(p) for p in sorted(gt_dir.glob("*.png"))}
    by_size: dict[tuple, list[str]] = {}
    for name, gt in gts.items():
        by_size.setdefault(tuple(gt.shape[-2:]), []).append(name)
    pipe = quiet_pipeline(model)
    samplers = [(names, pipeline_sampler(pipe, gray_dir, names, settings)) for names in by_size.values()]
    curve = []
    for checkpoint in list_checkpoints(run_dir):
        ema = checkpoint / "ema.safetensors"
        if ema.is_file():  # the averaged weights, keyed "unet.<parameter>"
            weights = {k.removeprefix("unet."): v for k, v in load_file(ema).items()}
        else:
            weights = load_file(checkpoint / "model.safetensors")
        counts, psnr = torch.zeros(2, 6, dtype=torch.float64), []  # right / counted pixels per hue sector
        pipe.unet.load_state_dict(weights, strict=True)
        for names, sample in samplers:
            pred = M.as_uint8_batch((np.stack(sample(priors="none")) * 255).round().astype(np.uint8))
            gt = torch.cat([gts[n] for n in names])
            counts += hue.hue_sector_counts(pred, gt).sum(0)
            psnr += M.psnr(pred, gt).tolist()
        curve.append({"step": checkpoint_step(checkpoint), "hue_accuracy": hue.balanced_hue_accuracy(counts),
                      "psnr": float(np.mean(psnr))})
    return curve


def render_world(summary: dict) -> list[str]:
    """The world's extra table lines: hue accuracy per class for each row, the ring with and without its caption."""
    lines = ["", "**hue accuracy per class** (held-out; balanced over hue sectors)", "",
             "| method | all | " + " | ".join(CLASSES) + " |", "|---|" + "---:|" * (len(CLASSES) + 1)]
    for row, acc in summary.get("class_accuracy", {}).items():
        lines.append(f"| {row} | " + " | ".join(_fmt(acc.get(c)) for c in ["all", *CLASSES]) + " |")
    return lines


def render_curve(curve: list[dict]) -> list[str]:
    """The learning curve's table lines (none for an empty curve)."""
    if not curve:
        return []
    return ["", "**learning curve** (ColorDiff U-Net, held-out, no prompt, single samples)", "",
            "| step | " + " | ".join(str(p["step"]) for p in curve) + " |", "|---|" + "---:|" * len(curve),
            "| hue accuracy | " + " | ".join(_fmt(p["hue_accuracy"]) for p in curve) + " |",
            "| PSNR | " + " | ".join(_fmt(p["psnr"]) for p in curve) + " |"]


def _fmt(value) -> str:
    return "-" if value is None or not np.isfinite(value) else f"{value:.2f}"


def save_json(path: Path, data) -> None:
    from colordiff.io import atomic_write

    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1))


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
