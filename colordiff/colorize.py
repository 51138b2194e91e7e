"""`colordiff colorize`: colorize image files and folders into a mirrored output folder, resumably.

ColorizeConfig holds the settings (YAML keys; the CLI flags are shortcuts for them); run_colorize is the job: plan the
outputs, skip finished ones, split the files across launched processes, read ahead, colorize in batches, write each
output atomically, report each bad file in one line and end with a summary and an exit status.
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from colordiff.captions_file import caption_for, load_captions, priors_beside_captions
from colordiff.colorize_jobs import Job, Tally, report, run_jobs
from colordiff.config import error_line
from colordiff.devices import DTYPES, accelerator_available
from colordiff.errors import EXIT_FAILURES, EXIT_INTERRUPTED, EXIT_OK, UsageError
from colordiff.files import remove_stale_temps, scan_folder
from colordiff.io import IMAGE_SUFFIXES, output_suffix
from colordiff.schedulers import SCHEDULERS, make_scheduler

SUFFIX_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF"}


@dataclass
class ColorizeConfig:
    """Settings of `colordiff colorize` (YAML keys; the flags are shortcuts for the same keys)."""

    model: str = "???"  # a model folder or hub id (required)
    output_dir: str = "???"  # required
    inputs: list[str] = field(default_factory=list)
    steps: int = field(default=50, metadata={"min": 1})  # sampling steps (paper 000: DDIM, T = 50)
    # a name of colordiff/schedulers.py's SCHEDULERS (ddim, dpmpp_2m, unipc, lcm, ...); None: the model folder's own
    scheduler: str | None = field(default=None, metadata={"choices": tuple(SCHEDULERS)})
    guidance_scale: float = field(default=7.5, metadata={"min": 0})
    seed: int = 0  # with the file's relative path and the sample index, fixes each output
    num_samples: int = field(default=1, metadata={"min": 1})
    # working side: a positive multiple of 8 here; the model's sides are rounded to multiples of its size multiple
    resolution: int = field(default=512, metadata={"min": 8, "multiple_of": 8})
    batch_size: int = field(default=4, metadata={"min": 1})  # images (files x samples) per U-Net batch
    prompt: str | None = None  # None: the automatic text (category + caption priors), "" without them
    keep_luminance: bool = True
    device: str = "auto"  # auto: this process's accelerator, else cpu
    # auto: bfloat16 on CUDA, float32 otherwise; or float32 / float16 / bfloat16
    dtype: str = field(default="auto", metadata={"choices": ("auto", *DTYPES)})
    overwrite: bool = False
    max_pixels: int = field(default=100_000_000, metadata={"min": 1})  # decompression-bomb guard for inputs
    local_files_only: bool = False  # never contact the hub for --model
    priors: str = "auto"  # auto (those the model records) | none | all | caption,category,segmentation (any subset)
    # segmentation guidance strength s (paper 000: 0.3); 0 turns it off
    seg_strength: float = field(default=0.3, metadata={"min": 0, "max": 1})
    save_priors: bool = False  # write OUT/<name>.priors.json per input: caption, category, prompt, instances
    priors_config: str | None = None  # YAML naming the prior generators; None: the model's semantic_priors.yaml
    captions: str | None = None  # JSONL of per-image captions (scripts/caption.py's format) used instead of a captioner
    # full-size pixels read and held at once; a larger image runs alone
    pixels_in_flight: int = field(default=32_000_000, metadata={"min": 1})


# -- planning -----------------------------------------------------------------------------------------------------
def collect_inputs(inputs: list[str], output_dir: Path) -> tuple[list[tuple[Path, Path]], list[tuple[Path, str]]]:
    """(file, path relative to its INPUT) for every input: a file as named, a folder's image files recursively; and
    the entries of those folders that are not files that can be read, with the reason (FIFOs, broken links, loops).

    Inside folders only image suffixes count (so sidecar files are ignored), hidden files and the output folder are
    skipped; anything named on the command line that is not a folder is tried as a file (reading says what is
    wrong with it). A missing INPUT is a usage error.
    """
    found, odd = [], []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            scan = scan_folder(path, IMAGE_SUFFIXES, exclude=output_dir)
            found += [(file, file.relative_to(path)) for file in scan.files]
            odd += scan.odd
        elif os.path.lexists(path):  # a file, or a FIFO / broken link that read_image names as such
            found.append((path, Path(path.name)))
        else:
            raise UsageError(f"input not found: {name}")
    return found, odd


def output_paths(output_dir: Path, relative: Path, num_samples: int) -> list[Path]:
    """OUT mirrors the input's relative path; the name is kept, PNG unless the input's format suits; several
    samples get a numbered suffix (name_0.png, name_1.png, ...)."""
    suffix = output_suffix(relative, SUFFIX_FORMATS.get(relative.suffix.lower(), ""), has_alpha=False)
    target = output_dir / relative
    if num_samples == 1:
        return [target.with_suffix(suffix)]
    return [target.with_name(f"{target.stem}_{k}{suffix}") for k in range(num_samples)]


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
    from colordiff.pipelines.registry import ModelLoadError

    diffusers.utils.logging.disable_progress_bar()  # the CLI shows one bar: files done
    transformers.utils.logging.disable_progress_bar()

    try:
        pipe = load_pipeline(config.model, dtype=dtype, local_files_only=config.local_files_only)
    except ModelLoadError:  # already one line naming the model and the file at fault
        raise
    except (OSError, ValueError, TypeError) as err:
        raise UsageError(f"cannot load model {config.model}: {error_line(err)}") from None
    pipe.set_progress_bar_config(disable=True)
    if config.scheduler is not None:  # built from the folder's own config: the training schedule is kept
        pipe.scheduler = make_scheduler(config.scheduler, pipe.scheduler.config)
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
    """Colorize every input into config.output_dir; returns the exit status (0 all done, 1 some file failed,
    130 interrupted)."""
    from accelerate import PartialState

    # without an accelerator, accelerate only joins the other launched processes when told it runs on the CPU
    on_cpu = config.device == "cpu" or (config.device == "auto" and not accelerator_available())
    state = PartialState(cpu=on_cpu)
    output_dir = Path(config.output_dir)
    captions = None
    if config.captions is not None:
        if config.prompt is not None:
            raise UsageError("--prompt and --captions both give the text; pass one")
        priors_beside_captions(config.priors)  # --priors none (or without caption) + --captions: fail now
        captions = load_captions(config.captions)

    tally, jobs, owner = Tally(), [], {}
    found, odd = collect_inputs(config.inputs, output_dir)
    tally.not_files = len(odd)
    for path, reason in odd if state.is_main_process else ():
        report(f"{path}: {reason}; skipped")
    for source, relative in found:
        outputs = output_paths(output_dir, relative, config.num_samples)
        if outputs[0] in owner:  # e.g. photo.bmp and photo.png both become photo.png
            if state.is_main_process:  # every process plans the same jobs: one of them reports
                report(f"{source}: output {outputs[0]} would overwrite the output of {owner[outputs[0]]}; skipped")
                tally.failed += 1
            continue
        owner[outputs[0]] = source
        jobs.append(Job(source, relative, outputs))
    check_output_dir(output_dir)
    if state.is_main_process:  # what killed runs left: only colordiff's own temp names, untouched for a while
        remove_stale_temps(output_dir, recursive=True)

    def finished(job: Job) -> bool:
        return all(p.is_file() for p in job.outputs) and (not config.save_priors or job.priors_path.is_file())

    todo = [j for j in jobs if config.overwrite or not finished(j)]
    tally.skipped = len(jobs) - len(todo)
    if captions is not None:
        todo, uncaptioned = _attach_captions(todo, captions, config.captions, say=state.is_main_process)
        tally.failed += uncaptioned if state.is_main_process else 0  # every process plans the same jobs: one reports
    todo = todo[state.process_index :: state.num_processes]  # each process takes every n-th file
    status = EXIT_OK
    try:
        if todo:
            device, dtype = resolve_device_dtype(config.device, config.dtype, state)
            pipe = load_model(config, device, dtype)
            kinds = prepare_priors(pipe, config, device, dtype)
            run_jobs(pipe, todo, config, kinds, device, tally, lambda job: not config.overwrite and finished(job))
    except KeyboardInterrupt:
        status = EXIT_INTERRUPTED

    where = f" [process {state.process_index + 1}/{state.num_processes}]" if state.num_processes > 1 else ""
    elsewhere = f", {tally.elsewhere} left to another run computing them" if tally.elsewhere else ""
    elsewhere += f", {tally.not_files} entries not readable files (named above)" if tally.not_files else ""
    stopped = ", interrupted" if status == EXIT_INTERRUPTED else ""
    print(f"colordiff: {tally.done} colorized, {tally.skipped} skipped (already done), {tally.failed} failed"
          f"{elsewhere}{stopped}{where}", file=sys.stderr)
    if status == EXIT_OK and tally.failed:
        status = EXIT_FAILURES
    return status


def check_output_dir(output_dir: Path) -> None:
    """Create OUT and prove it writable now, before any model loads: a usage error names the reason."""
    if output_dir.exists() and not output_dir.is_dir():
        raise UsageError(f"output folder {output_dir}: is a file, not a folder")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check.", dir=output_dir)
        os.close(fd)
        os.unlink(probe)
    except (FileExistsError, NotADirectoryError):
        raise UsageError(f"output folder {output_dir}: a parent folder is a file") from None
    except OSError as err:
        raise UsageError(f"output folder {output_dir}: not writable: {err.strerror or error_line(err)}") from None


def _attach_captions(jobs: list[Job], captions: dict[str, str], path: str, say: bool) -> tuple[list[Job], int]:
    """The jobs with their caption from the --captions file set, and how many have none (each reported in one line,
    when `say`, and left out: they count as failed, the batch goes on)."""
    kept, missing = [], 0
    for job in jobs:
        job.caption = caption_for(captions, job.source, job.relative)
        if job.caption is not None:
            kept.append(job)
            continue
        missing += 1
        if say:
            report(f"{job.source}: no caption in {path} (no line with \"path\" {job.relative.as_posix()} or "
                    f"{Path(os.path.abspath(job.source)).as_posix()})")
    return kept, missing


