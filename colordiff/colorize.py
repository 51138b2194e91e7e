"""`colordiff colorize`: colorize image files and folders into a mirrored output folder, resumably.

ColorizeConfig holds the settings (YAML keys; the CLI flags are shortcuts for them); run_colorize is the job: plan the
outputs, skip finished ones, split the files across launched processes, read ahead, colorize in batches, write each
output atomically, report each bad file in one line and end with a summary and an exit status.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from colordiff.captions_file import caption_for, load_captions, priors_beside_captions
from colordiff.colorize_common import check_output_dir, load_model, prepare_priors, report, resolve_device_dtype
from colordiff.colorize_jobs import Job, Tally, run_jobs
from colordiff.devices import DTYPES, accelerator_available
from colordiff.errors import EXIT_FAILURES, EXIT_INTERRUPTED, EXIT_OK, UsageError
from colordiff.files import remove_stale_temps, scan_folder
from colordiff.io import IMAGE_SUFFIXES, output_suffix
from colordiff.schedulers import SCHEDULERS

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
    # which caption of each --captions line: caption_gray (Des_g, or "caption"), or another key such as
    # caption_color (Des_c) for a model trained on it
    caption_key: str = "caption_gray"
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
def run_colorize(config: ColorizeConfig) -> int:
    """Colorize every input into config.output_dir; returns the exit status (0 all done, 1 some file failed,
    130 interrupted)."""
    from accelerate import PartialState

    # without an accelerator, accelerate only joins the other launched processes when told it runs on the CPU
    on_cpu = config.device == "cpu" or (config.device == "auto" and not accelerator_available())
    state = PartialState(cpu=on_cpu)
    captions = _read_captions(config)
    tally = Tally()
    jobs = plan_jobs(config, tally, say=state.is_main_process)

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
    print(_summary(tally, status, state), file=sys.stderr)
    return EXIT_FAILURES if status == EXIT_OK and tally.failed else status


def plan_jobs(config: ColorizeConfig, tally: Tally, say: bool) -> list[Job]:
    """Every input's job, its outputs planned; what cannot be an input, or would overwrite another input's output,
    is reported (when `say`: every launched process plans the same jobs, one of them reports) and counted. OUT is
    created and checked writable, and what killed runs left there is removed (by the reporting process)."""
    output_dir = Path(config.output_dir)
    jobs, owner = [], {}
    found, odd = collect_inputs(config.inputs, output_dir)
    tally.not_files = len(odd)
    for path, reason in odd if say else ():
        report(f"{path}: {reason}; skipped")
    for source, relative in found:
        outputs = output_paths(output_dir, relative, config.num_samples)
        if outputs[0] in owner:  # e.g. photo.bmp and photo.png both become photo.png
            if say:
                report(f"{source}: output {outputs[0]} would overwrite the output of {owner[outputs[0]]}; skipped")
                tally.failed += 1
            continue
        owner[outputs[0]] = source
        jobs.append(Job(source, relative, outputs))
    check_output_dir(output_dir)
    if say:  # what killed runs left: only colordiff's own temp names, untouched for a while
        remove_stale_temps(output_dir, recursive=True)
    return jobs


def _read_captions(config: ColorizeConfig) -> dict[str, str] | None:
    """The --captions file's captions, checked against the other settings first; None without one."""
    if config.captions is None:
        return None
    if config.prompt is not None:
        raise UsageError("--prompt and --captions both give the text; pass one")
    priors_beside_captions(config.priors)  # --priors none (or without caption) + --captions: fail now
    return load_captions(config.captions, config.caption_key)


def _summary(tally: Tally, status: int, state) -> str:
    """The run's last line: what was colorized, skipped and failed (per process when several ran)."""
    where = f" [process {state.process_index + 1}/{state.num_processes}]" if state.num_processes > 1 else ""
    elsewhere = f", {tally.elsewhere} left to another run computing them" if tally.elsewhere else ""
    elsewhere += f", {tally.not_files} entries not readable files (named above)" if tally.not_files else ""
    stopped = ", interrupted" if status == EXIT_INTERRUPTED else ""
    return (f"colordiff: {tally.done} colorized, {tally.skipped} skipped (already done), {tally.failed} failed"
            f"{elsewhere}{stopped}{where}")


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
