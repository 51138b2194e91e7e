"""`colordiff colorize`: colorize image files and folders into a mirrored output folder, resumably.

ColorizeConfig holds the settings (YAML keys; the CLI flags are shortcuts for them); run_colorize is the job: plan the
outputs, skip finished ones, split the files across launched processes, read ahead, colorize in batches, write each
output atomically, report each bad file in one line and end with a summary and an exit status.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from colordiff.captions_file import caption_for, load_captions, priors_beside_captions
from colordiff.config import error_line
from colordiff.devices import DTYPES, accelerator_available
from colordiff.errors import EXIT_FAILURES, EXIT_OK, UsageError
from colordiff.io import ImageReadError, atomic_write, is_image_path, output_suffix, read_image, write_image

SUFFIX_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF"}


@dataclass
class ColorizeConfig:
    """Settings of `colordiff colorize` (YAML keys; the flags are shortcuts for the same keys)."""

    model: str = "???"  # a model folder or hub id (required)
    output_dir: str = "???"  # required
    inputs: list[str] = field(default_factory=list)
    steps: int = 50  # DDIM steps (paper 000: T = 50)
    guidance_scale: float = 7.5
    seed: int = 0  # with the file's relative path and the sample index, fixes each output
    num_samples: int = 1
    resolution: int = 512
    batch_size: int = 4  # images (files x samples) per U-Net batch
    prompt: str | None = None  # None: the automatic text (category + caption priors), "" without them
    keep_luminance: bool = True
    device: str = "auto"  # auto: this process's accelerator, else cpu
    dtype: str = "auto"  # auto: bfloat16 on CUDA, float32 otherwise; or float32 / float16 / bfloat16
    overwrite: bool = False
    max_pixels: int = 100_000_000  # decompression-bomb guard for inputs
    local_files_only: bool = False  # never contact the hub for --model
    priors: str = "auto"  # auto (those the model records) | none | all | caption,category,segmentation (any subset)
    seg_strength: float = 0.3  # segmentation guidance strength s (paper 000: 0.3); 0 turns it off
    save_priors: bool = False  # write OUT/<name>.priors.json per input: caption, category, prompt, instances
    priors_config: str | None = None  # YAML naming the prior generators; None: the model's semantic_priors.yaml
    captions: str | None = None  # JSONL of per-image captions (scripts/caption.py's format) used instead of a captioner


@dataclass
class Job:
    """One input file and the output path of each of its samples."""

    source: Path
    relative: Path
    outputs: list[Path]
    caption: str | None = None  # from the --captions file, when one is given

    @property
    def priors_path(self) -> Path:
        """The --save-priors sidecar: OUT/<relative folder>/<stem>.priors.json, one per input (not per sample)."""
        return self.outputs[0].parent / f"{self.relative.stem}.priors.json"


# -- planning -----------------------------------------------------------------------------------------------------
def collect_inputs(inputs: list[str], output_dir: Path) -> list[tuple[Path, Path]]:
    """(file, path relative to its INPUT) for every input: a file as named, a folder's image files recursively.

    Inside folders only image suffixes count (so sidecar files are ignored), hidden files and the output folder are
    skipped; a file named on the command line is always tried. A missing INPUT is a usage error.
    """
    found = []
    output_dir = output_dir.resolve()
    for name in inputs:
        path = Path(name)
        if path.is_file():
            found.append((path, Path(path.name)))
        elif path.is_dir():
            for file in sorted(path.rglob("*")):
                relative = file.relative_to(path)
                if (file.is_file() and is_image_path(file) and not any(p.startswith(".") for p in relative.parts)
                        and output_dir not in file.resolve().parents):
                    found.append((file, relative))
        else:
            raise UsageError(f"input not found: {name}")
    return found


def output_paths(output_dir: Path, relative: Path, num_samples: int) -> list[Path]:
    """OUT mirrors the input's relative path; the name is kept, PNG unless the input's format suits; several
    samples get a numbered suffix (name_0.png, name_1.png, ...)."""
    suffix = output_suffix(relative, SUFFIX_FORMATS.get(relative.suffix.lower(), ""), has_alpha=False)
    target = output_dir / relative
    if num_samples == 1:
        return [target.with_suffix(suffix)]
    return [target.with_name(f"{target.stem}_{k}{suffix}") for k in range(num_samples)]


def sample_seed(seed: int, relative: Path, sample: int) -> int:
    """A seed that depends only on (seed, file, sample): results ignore batch size, order and process count."""
    digest = hashlib.sha256(f"{seed}\0{relative.as_posix()}\0{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


# -- running ------------------------------------------------------------------------------------------------------
def resolve_device_dtype(device: str, dtype: str, state) -> tuple[torch.device, torch.dtype]:
    resolved = state.device if device == "auto" else torch.device(device)
    if dtype == "auto":
        return resolved, torch.bfloat16 if resolved.type == "cuda" else torch.float32
    return resolved, DTYPES[dtype]


def load_model(config: ColorizeConfig, device: torch.device, dtype: torch.dtype):
    import diffusers
    import transformers

    from colordiff.pipelines import load_pipeline

    diffusers.utils.logging.disable_progress_bar()  # the CLI shows one bar: files done
    transformers.utils.logging.disable_progress_bar()

    try:
        pipe = load_pipeline(config.model, dtype=dtype, local_files_only=config.local_files_only)
    except (OSError, ValueError, TypeError) as err:
        raise UsageError(f"cannot load model {config.model}: {error_line(err)}") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def prepare_priors(pipe, config: ColorizeConfig, device: torch.device, dtype: torch.dtype) -> tuple[str, ...]:
    """The prior kinds this run computes, their generators loaded now: a missing or broken one is a usage error
    before any file is processed. A --prompt replaces caption and category, so only segmentation remains; with
    --captions the caption comes from the file, so the captioner is neither needed nor loaded."""
    from colordiff.semantics import PriorGenerators

    try:
        if config.priors_config is not None:
            pipe.prior_generators = PriorGenerators.from_file(config.priors_config, config.local_files_only)
        if config.captions is not None:
            kinds = tuple(k for k in pipe.resolve_priors(priors_beside_captions(config.priors)) if k != "caption")
        else:
            kinds = pipe.resolve_priors(config.priors)
        if config.prompt is not None:
            kinds = tuple(k for k in kinds if k == "segmentation")
        for kind in kinds:
            pipe.prior_generators.generator(kind, device, dtype)
    except ValueError as err:  # ConfigError, PriorGeneratorError and missing generators are ValueErrors
        raise UsageError(error_line(err)) from None
    return kinds


def run_colorize(config: ColorizeConfig) -> int:
    """Colorize every input into config.output_dir; returns the exit status (0 all done, 1 some file failed)."""
    from accelerate import PartialState

    # without an accelerator, accelerate only joins the other launched processes when told it runs on the CPU
    on_cpu = config.device == "cpu" or (config.device == "auto" and not accelerator_available())
    state = PartialState(cpu=on_cpu)
    output_dir = Path(config.output_dir)
    if config.num_samples < 1 or config.batch_size < 1 or config.steps < 1:
        raise UsageError("num_samples, batch_size and steps must be at least 1")
    if not 0.0 <= config.seg_strength <= 1.0:
        raise UsageError(f"seg_strength must be in [0, 1], got {config.seg_strength}")
    captions = None
    if config.captions is not None:
        if config.prompt is not None:
            raise UsageError("--prompt and --captions both give the text; pass one")
        priors_beside_captions(config.priors)  # --priors none (or without caption) + --captions: fail now
        captions = load_captions(config.captions)

    failed, jobs, owner = 0, [], {}
    for source, relative in collect_inputs(config.inputs, output_dir):
        outputs = output_paths(output_dir, relative, config.num_samples)
        if outputs[0] in owner:  # e.g. photo.bmp and photo.png both become photo.png
            if state.is_main_process:  # every process plans the same jobs: one of them reports
                _report(f"{source}: output {outputs[0]} would overwrite the output of {owner[outputs[0]]}; skipped")
                failed += 1
            continue
        owner[outputs[0]] = source
        jobs.append(Job(source, relative, outputs))

    def finished(job: Job) -> bool:
        return all(p.is_file() for p in job.outputs) and (not config.save_priors or job.priors_path.is_file())

    todo = [j for j in jobs if config.overwrite or not finished(j)]
    skipped = len(jobs) - len(todo)
    if captions is not None:
        todo, uncaptioned = _attach_captions(todo, captions, config.captions, report=state.is_main_process)
        failed += uncaptioned if state.is_main_process else 0  # every process plans the same jobs: one reports
    todo = todo[state.process_index :: state.num_processes]  # each process takes every n-th file
    done = 0
    if todo:
        device, dtype = resolve_device_dtype(config.device, config.dtype, state)
        pipe = load_model(config, device, dtype)
        done, batch_failed = _colorize_jobs(pipe, todo, config, prepare_priors(pipe, config, device, dtype))
        failed += batch_failed

    where = f" [process {state.process_index + 1}/{state.num_processes}]" if state.num_processes > 1 else ""
    print(f"colordiff: {done} colorized, {skipped} skipped (already done), {failed} failed{where}", file=sys.stderr)
    return EXIT_FAILURES if failed else EXIT_OK


def _colorize_jobs(pipe, jobs: list[Job], config: ColorizeConfig, kinds: tuple[str, ...] = ()) -> tuple[int, int]:
    files_per_batch = max(1, config.batch_size // config.num_samples)
    batches = [jobs[i : i + files_per_batch] for i in range(0, len(jobs), files_per_batch)]
    done = failed = 0
    with ThreadPoolExecutor(max_workers=4) as pool, tqdm(total=len(jobs), unit="img", disable=None) as bar:
        read = lambda batch: [pool.submit(read_image, job.source, config.max_pixels) for job in batch]  # noqa: E731
        pending = read(batches[0])
        for index, batch in enumerate(batches):
            futures, pending = pending, read(batches[index + 1]) if index + 1 < len(batches) else []  # prefetch
            loaded = []
            for job, future in zip(batch, futures, strict=True):
                try:
                    loaded.append((job, future.result()))
                except ImageReadError as err:
                    _report(str(err))
                    failed += 1
            ok, bad = _colorize_batch(pipe, loaded, config, kinds)
            done, failed = done + ok, failed + bad
            bar.update(len(batch))
    return done, failed


def _colorize_batch(pipe, loaded, config: ColorizeConfig, kinds: tuple[str, ...] = ()) -> tuple[int, int]:
    """Run one batch (every sample of every file in one pipeline call) and write the outputs; (ok, failed).

    The priors `kinds` are computed once per file (not per sample) and passed to the pipeline precomputed.
    """
    if not loaded:
        return 0, 0
    images, generators = [], []
    for job, image in loaded:
        for sample in range(config.num_samples):
            images.append(image.rgb)
            generators.append(torch.Generator("cpu").manual_seed(sample_seed(config.seed, job.relative, sample)))
    try:
        file_priors = pipe.compute_priors([image.rgb for _, image in loaded], kinds) if kinds else None
        if config.captions is not None:  # the file's caption in place of the captioner's
            file_priors = _with_file_captions(file_priors, [job for job, _ in loaded], config.captions)
        priors = [p for p in file_priors for _ in range(config.num_samples)] if file_priors else "none"
        output = pipe(images, prompt=config.prompt, num_inference_steps=config.steps,
                      guidance_scale=config.guidance_scale, generator=generators, resolution=config.resolution,
                      keep_luminance=config.keep_luminance, output_type="np", priors=priors,
                      seg_strength=config.seg_strength)
        results = output.images
    except Exception as err:  # noqa: BLE001 - one bad batch must not stop the job
        for job, _ in loaded:
            _report(f"{job.source}: colorization failed: {type(err).__name__}: {error_line(err)}")
        return 0, len(loaded)

    ok = bad = 0
    for index, (job, image) in enumerate(loaded):
        samples = results[index * config.num_samples : (index + 1) * config.num_samples]
        try:
            for path, rgb in zip(job.outputs, samples, strict=True):
                alpha = image.alpha if path.suffix.lower() not in (".jpg", ".jpeg") else None
                write_image(path, rgb, alpha=alpha)
            if config.save_priors:
                used = output.priors[index * config.num_samples] if output.priors else None
                _write_priors(job, used, config)
            ok += 1
        except (OSError, ValueError) as err:
            _report(f"{job.source}: cannot write output: {error_line(err)}")
            bad += 1
    return ok, bad


def _attach_captions(jobs: list[Job], captions: dict[str, str], path: str, report: bool) -> tuple[list[Job], int]:
    """The jobs with their caption from the --captions file set, and how many have none (each reported in one line,
    when `report`, and left out: they count as failed, the batch goes on)."""
    kept, missing = [], 0
    for job in jobs:
        job.caption = caption_for(captions, job.source, job.relative)
        if job.caption is not None:
            kept.append(job)
            continue
        missing += 1
        if report:
            _report(f"{job.source}: no caption in {path} (no line with \"path\" {job.relative.as_posix()} or "
                    f"{Path(os.path.abspath(job.source)).as_posix()})")
    return kept, missing


def _with_file_captions(file_priors, jobs: list[Job], captions_path: str) -> list:
    """Each job's priors with its caption from the --captions file; the sidecar records where it came from."""
    from colordiff.semantics import ImagePriors

    file_priors = file_priors or [ImagePriors() for _ in jobs]
    source = Path(captions_path).resolve().as_posix()
    return [replace(p, caption=job.caption, extra={**p.extra, "caption_source": source})
            for p, job in zip(file_priors, jobs, strict=True)]


def _write_priors(job: Job, priors, config: ColorizeConfig) -> None:
    """The JSON sidecar of one input, written atomically: the priors used (masks as run lengths) and the prompt."""
    from colordiff.semantics import ImagePriors

    data = (priors or ImagePriors(extra={"prompt": config.prompt or ""})).to_dict()
    data.update(source=job.relative.as_posix(), seg_strength=config.seg_strength)
    with atomic_write(job.priors_path) as tmp:
        tmp.write_text(json.dumps(data))


def _report(message: str) -> None:
    tqdm.write(f"colordiff: {message}", file=sys.stderr)
