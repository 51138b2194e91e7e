"""
`colordiff evaluate`: a folder of predictions against a folder of ground truths, under the evaluation protocol
(colordiff/protocol.py: pairing, size and crop). Preparing the papers' evaluation sets and rendering their tables:
colordiff/reproduce.py.

Several processes (`accelerate launch --multi_gpu --num_processes N -m colordiff.cli evaluate ...`) split the work:
process r scores pairs[r::N] on its own device; the per-image rows and failures are gathered to every process in
pairing order, and the FID statistics (feature sums, covariance sums, counts) are summed over the processes, so every
process returns the results of a single-process run (FID to float rounding). Only the main process writes and prints.
A single process never touches torch.distributed.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from colordiff import hue
from colordiff import metrics as M
from colordiff.config import ConfigError, setting
from colordiff.devices import accelerator_available
from colordiff.errors import EXIT_FAILURES, EXIT_OK, UsageError
from colordiff.io import ImageReadError, atomic_write
from colordiff.protocol import Protocol, check_protocol, load_pair, pair_folders

REPO = Path(__file__).resolve().parents[1]
METRIC_GROUPS = ("colorfulness", "psnr", "ssim", "lpips", "fid", "delta_ab", "hue_accuracy")
HUE_COLUMNS = [f"hue_{kind}_{s}" for kind in ("right", "pixels") for s in range(6)]  # per image, for pooling
_ALIASES = {"delta_cf": "colorfulness", "cf": "colorfulness"}


@dataclass
class MetricSettings:
    """Which metrics, with which weights (shared by `colordiff evaluate` and the eval-set configs)."""

    metrics: list[str] | None = None  # None: colorfulness, psnr, and fid when fid_weights is set
    fid_variant: str = "fidelity"  # fidelity (torch-fidelity's FID) | torchvision (CT2 / DDColor scripts)
    fid_weights: str | None = None  # local Inception weights (.pth read with weights_only=True, or .safetensors)
    lpips_net: str = "vgg"  # vgg (as CT2) | alex
    lpips_weights: str | None = None  # local torchvision vgg16 / alexnet weights
    # pred and gt sizes differ: error | resize (pred to gt's size, then the protocol)
    on_size_mismatch: str = setting("error", choices=("error", "resize"), rule="must be error or resize")
    batch_size: int = setting(50, min=1)
    device: str = "auto"  # auto: cuda when available, else cpu


@dataclass
class EvalConfig(MetricSettings):
    """Settings of `colordiff evaluate`."""

    pred: str = "???"  # folder of predictions (required)
    gt: str = "???"  # folder of ground truths (required)
    protocol: Protocol = field(default_factory=Protocol)
    # N > 1: pred holds N samples per image (x_0 ... x_{N-1}, `colorize --num-samples N`); their per-pixel mean
    # (Lab a/b averaged, L kept) is scored
    samples: int = setting(1, min=1)
    json: str | None = None  # results file (also printed to stdout)
    csv: str | None = None  # per-image metrics


# -----------------------------------------------------------------------------
# evaluation


def selected_metrics(config: MetricSettings) -> list[str]:
    if config.metrics is None:
        return ["colorfulness", "psnr"] + (["fid"] if config.fid_weights else [])
    chosen = []
    for name in (n.strip().lower() for item in config.metrics for n in item.split(",") if n.strip()):
        name = _ALIASES.get(name, name)
        if name not in METRIC_GROUPS:
            raise ConfigError(f"unknown metric {name!r}; choose from {', '.join(METRIC_GROUPS)} (or delta_cf)")
        if name not in chosen:
            chosen.append(name)
    if not chosen:
        raise ConfigError("no metric selected")
    return chosen


def resolve_device(device: str, state=None) -> torch.device:
    """`auto`: the process's own device when launched on several (accelerate's state), else CUDA when available."""
    if device != "auto":
        return torch.device(device)
    if state is not None:
        return state.device  # cuda:<local rank> on GPUs
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def distributed_state(device: str = "auto"):
    """accelerate's PartialState when this process is one of several (`accelerate launch`, torchrun), else None: a
    single process never touches torch.distributed."""
    import torch.distributed as dist

    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if not launched and not (dist.is_available() and dist.is_initialized()):
        return None
    from accelerate import PartialState

    # without an accelerator, accelerate only joins the other launched processes when told it runs on the CPU
    state = PartialState(cpu=device == "cpu" or (device == "auto" and not accelerator_available()))
    return state if state.num_processes > 1 else None


class _Scorer:
    """Per-image metrics of batches of pairs, plus the FID accumulator."""

    def __init__(self, names: list[str], config: MetricSettings, state=None, crop_border: int = 0):
        self.names, self.device = names, resolve_device(config.device, state)
        self.crop_border = crop_border  # protocol.crop_border: cut from each border before PSNR and SSIM only
        if config.on_size_mismatch not in ("error", "resize"):
            raise ConfigError(f"on_size_mismatch must be error or resize, got {config.on_size_mismatch!r}")
        try:
            self.fid = M.FIDAccumulator(M.load_fid_extractor(config.fid_variant, config.fid_weights),
                                        self.device) if "fid" in names else None
            self.lpips = M.load_lpips(config.lpips_net, config.lpips_weights).to(self.device) \
                if "lpips" in names else None
        except (M.WeightsError, ValueError) as err:
            raise UsageError(str(err)) from None

    def score(self, pred: torch.Tensor, gt: torch.Tensor) -> dict[str, torch.Tensor]:
        """pred, gt: uint8 (B, 3, H, W) -> {column: (B,) float64}. Colorfulness, LPIPS and FID see the whole
        images; PSNR and SSIM the images less crop_border pixels on each side (BasicSR's crop_border)."""
        out = {}
        if "colorfulness" in self.names:
            out["colorfulness"], out["colorfulness_hasler"] = M.colorfulness(pred), M.colorfulness(pred, "hasler")
            out["colorfulness_gt"], out["colorfulness_hasler_gt"] = M.colorfulness(gt), M.colorfulness(gt, "hasler")
            out["delta_cf"] = (out["colorfulness"] - out["colorfulness_gt"]).abs()  # this image's |CF - CF_gt|
            out["delta_cf_hasler"] = (out["colorfulness_hasler"] - out["colorfulness_hasler_gt"]).abs()
        if "psnr" in self.names or "ssim" in self.names:
            c = self.crop_border
            if c and 2 * c >= min(pred.shape[-2:]):
                raise UsageError(f"protocol.crop_border {c} leaves nothing of a {pred.shape[-1]} x {pred.shape[-2]} "
                                 "image (it is cut from each border)")
            p, g = (pred[..., c:-c, c:-c], gt[..., c:-c, c:-c]) if c else (pred, gt)
            if "psnr" in self.names:
                out["psnr"] = M.psnr(p, g)
            if "ssim" in self.names:
                out["ssim"] = M.ssim(p, g)
        if "delta_ab" in self.names:
            out["delta_ab"] = M.delta_ab(pred, gt)
        if "hue_accuracy" in self.names:
            counts = hue.hue_sector_counts(pred, gt)  # (B, 2, 6)
            out["hue_accuracy"] = torch.tensor([hue.balanced_hue_accuracy(c) for c in counts], dtype=torch.float64)
            out |= dict(zip(HUE_COLUMNS, counts.flatten(1).unbind(1), strict=True))
        if "lpips" in self.names:
            out["lpips"] = self.lpips(pred.to(self.device), gt.to(self.device)).cpu()
        if self.fid is not None:
            self.fid.update(pred, gt)
        return out


def evaluate_pairs(pairs: list[tuple[str, Path, Path]], config: EvalConfig) -> tuple[dict, list[dict]]:
    """Score every pair: (set-level results, per-image rows in pairing order). Unreadable pairs are reported and
    left out. Launched on several processes, each scores pairs[rank::world] and every process returns the results
    of all pairs (rows and failures gathered, FID statistics summed): the same values as one process computes."""
    names = selected_metrics(config)
    check_protocol(config.protocol)
    if config.batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {config.batch_size}")
    state = distributed_state(config.device)
    scorer = _Scorer(names, config, state, crop_border=config.protocol.crop_border)
    if state is None:
        rows, failed = _score_pairs(list(enumerate(pairs)), scorer, config)
    else:
        rows, failed = _score_shard(pairs, scorer, config, state)
    results = summarise([row for _, row in rows], names, scorer, config)  # FID: a collective, on every process
    results["n_failed"], results["failed"] = len(failed), [message for _, message in failed]
    return results, [row for _, row in rows]


def _score_shard(pairs, scorer: _Scorer, config: EvalConfig, state) -> tuple[list, list]:
    """This process's share, pairs[rank::world], then every process's (index, row) and (index, failure) gathered
    to all of them. An exception on one process is raised on every process (rather than leaving them waiting)."""
    from accelerate.utils import gather_object

    rank, world = state.process_index, state.num_processes
    rows, failed, error = [], [], None
    try:
        rows, failed = _score_pairs(list(enumerate(pairs))[rank::world], scorer, config, bar=state.is_main_process)
    except Exception as err:  # noqa: BLE001 - reported to the other processes, then raised again below
        error = err
    shares = gather_object([(rows, failed, None if error is None else f"{type(error).__name__}: {error}")])
    if error is not None:
        raise error
    errors = [f"process {i}: {e}" for i, (_, _, e) in enumerate(shares) if e is not None]
    if errors:
        raise RuntimeError("evaluation failed on another process: " + "; ".join(errors))
    return (sorted((item for share in shares for item in share[0]), key=lambda item: item[0]),
            sorted((item for share in shares for item in share[1]), key=lambda item: item[0]))


def _score_pairs(indexed: list[tuple[int, tuple[str, Path, Path]]], scorer: _Scorer, config: EvalConfig,
                 bar: bool = True) -> tuple[list[tuple[int, dict]], list[tuple[int, str]]]:
    """Score (index, pair)s batch by batch: [(index, row)] and [(index, failure)], both in index order."""
    rows, failed = [], []
    batches = [indexed[i : i + config.batch_size] for i in range(0, len(indexed), config.batch_size)]
    with ThreadPoolExecutor(max_workers=4) as pool, tqdm(total=len(indexed), unit="img", disable=None if bar else True,
                                                         desc="evaluate") as progress:
        read = lambda batch: [pool.submit(load_pair, p, g, config.protocol, config.on_size_mismatch)  # noqa: E731
                              for _, (_, p, g) in batch]
        pending = read(batches[0]) if batches else []
        for index, batch in enumerate(batches):
            futures, pending = pending, read(batches[index + 1]) if index + 1 < len(batches) else []  # prefetch
            loaded = []
            for (i, (key, _, gt)), future in zip(batch, futures, strict=True):
                try:
                    loaded.append((i, key, gt, *future.result()))
                except ImageReadError as err:
                    _report(str(err))
                    failed.append((i, str(err)))
            # images of one shape share a tensor (all of them, unless protocol.size is 0)
            for shape in dict.fromkeys(item[3].shape for item in loaded):
                group = [item for item in loaded if item[3].shape == shape]
                pred = M.as_uint8_batch(np.stack([item[3] for item in group]))  # (B, 3, H, W)
                gt = M.as_uint8_batch(np.stack([item[4] for item in group]))
                scores = scorer.score(pred, gt)
                for j, (i, key, gt_path, _, _) in enumerate(group):
                    row = {"image": key, "gt_path": str(gt_path)} | {k: float(v[j]) for k, v in scores.items()}
                    rows.append((i, row))
            progress.update(len(batch))
    return sorted(rows, key=lambda item: item[0]), failed


def summarise(rows: list[dict], names: list[str], scorer: _Scorer, config: MetricSettings) -> dict:
    """Set-level results: means of the per-image columns, ΔCF both ways, FID from the accumulated features
    (summed over the processes when launched on several: every process must call this)."""
    mean = lambda col: float(np.mean([r[col] for r in rows])) if rows else float("nan")  # noqa: E731
    results = {"n_images": len(rows)}
    if "colorfulness" in names:
        for col in ("colorfulness", "colorfulness_hasler", "colorfulness_gt", "colorfulness_hasler_gt"):
            results[col] = mean(col)
        # No peer code (CT2, DDColor) defines ΔCF and both readings appear in the literature, so both are reported:
        # delta_cf = |mean CF(pred) - mean CF(gt)|, the gap between the set means (DDColor's paper, SeAda's Table 1);
        # delta_cf_per_image = mean over images of |CF(pred_i) - CF(gt_i)| (the rows' delta_cf column), which a
        # set with some images too colorful and others too dull cannot average away.
        results["delta_cf"] = abs(results["colorfulness"] - results["colorfulness_gt"])
        results["delta_cf_hasler"] = abs(results["colorfulness_hasler"] - results["colorfulness_hasler_gt"])
        results["delta_cf_per_image"] = mean("delta_cf")
        results["delta_cf_per_image_hasler"] = mean("delta_cf_hasler")
    for col in ("psnr", "ssim", "lpips", "delta_ab"):
        if col in names:
            results[col] = mean(col)
    if "hue_accuracy" in names:  # pooled over the set's pixels (each sector weighs the same), not a mean of images
        counts = torch.tensor([[r[c] for c in HUE_COLUMNS] for r in rows], dtype=torch.float64).reshape(-1, 2, 6)
        results["hue_accuracy"] = hue.balanced_hue_accuracy(counts.sum(0)) if rows else float("nan")
    if scorer.fid is not None:
        if len(rows) < 2:  # rows of all processes: every process stops here, or none
            raise UsageError(f"FID needs at least 2 evaluated image pairs, got {len(rows)}")
        results["fid"] = scorer.fid.compute()
        results["fid_variant"] = config.fid_variant
        results["fid_weights_sha256"] = M.file_sha256(config.fid_weights) if config.fid_weights else None
    return results


def run_evaluation(config: EvalConfig) -> tuple[dict, list[dict]]:
    """Pair the folders, score them, attach the resolved config: (results, per-image rows). Launched on several
    processes, call it on every one: each scores its share and all return the same (results, rows) of every pair."""
    pairs = pair_folders(config.pred, config.gt, samples=config.samples)
    results, rows = evaluate_pairs(pairs, config)
    results["config"] = OmegaConf.to_container(OmegaConf.structured(config))
    return results, rows


def run_evaluate(config: EvalConfig) -> int:
    """The `colordiff evaluate` job: results as JSON on stdout (and in config.json if set), per-image rows in
    config.csv; returns the exit status (0 all scored, 1 some pairs failed). Under `accelerate launch` every process
    scores a share; the main process writes and prints, and all return the same status."""
    with torch.inference_mode():
        results, rows = run_evaluation(config)
    state = distributed_state(config.device)
    if state is None or state.is_main_process:
        text = to_json(results)
        if config.json:
            write_text(config.json, text)
        if config.csv:
            write_csv(config.csv, rows)
        print(text)
        print(f"colordiff: evaluated {results['n_images']} image pairs, {results['n_failed']} failed",
              file=sys.stderr)
    if state is not None:  # a process that exits with status 1 gets the others stopped: not before the files exist
        state.wait_for_everyone()
    return EXIT_FAILURES if results["n_failed"] else EXIT_OK


def to_json(results: dict) -> str:
    """JSON text; a non-finite number (PSNR of identical images is inf) is written as null, which JSON can hold."""
    clean = lambda v: None if isinstance(v, float) and not math.isfinite(v) else v  # noqa: E731
    return json.dumps({k: clean(v) for k, v in results.items()}, indent=2, ensure_ascii=False) + "\n"


def write_text(path: str | os.PathLike, text: str) -> Path:
    path = Path(path)
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def write_csv(path: str | os.PathLike, rows: list[dict]) -> Path:
    """Per-image rows; floats with repr precision, so a CSV value equals the computed one exactly."""
    buffer = io.StringIO()
    columns = list(dict.fromkeys(k for row in rows for k in row)) or ["image"]
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: repr(v) if isinstance(v, float) else v for k, v in row.items()} for row in rows)
    return write_text(path, buffer.getvalue())


def _report(message: str) -> None:
    tqdm.write(f"colordiff: {message}", file=sys.stderr)
