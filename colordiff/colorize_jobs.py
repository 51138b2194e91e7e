"""Running planned colorize jobs: claim, read ahead within a pixel budget, colorize in batches, write atomically.

Memory: an image is reduced to its exact Lab L (4 bytes per pixel) as soon as it is read, and batches are formed so
that the full-resolution pixels held at once (the batch being colorized plus the one being read ahead) stay within
`pixels_in_flight`; an image larger than that runs alone. Failures are per file: a batch that fails is retried one
file at a time, so only the file that causes an error fails, and every failure is one line naming the file.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from tqdm.auto import tqdm

from colordiff import claims
from colordiff.colorize_common import priors_sidecar, report, sample_seed, write_priors_sidecar
from colordiff.config import error_line
from colordiff.images import Luminance, luminance_of
from colordiff.io import ImageReadError, read_image, write_image
from colordiff.schedulers import scheduler_name

READERS = 4  # files decoded in parallel (decoding releases the GIL)


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
        return priors_sidecar(self.outputs[0].parent, self.relative)


@dataclass
class Tally:
    """What a run did so far (the summary line, also after Ctrl-C)."""

    done: int = 0
    skipped: int = 0  # already finished
    failed: int = 0
    elsewhere: int = 0  # claimed by another run that is computing them right now
    not_files: int = 0  # folder entries that are not readable files (FIFOs, broken links, loops)


@dataclass
class Prepared:
    """A read input reduced to what colorization needs."""

    job: Job
    luminance: Luminance  # the exact L, (1, 1, H, W) float32
    alpha: np.ndarray | None  # (H, W) uint8, kept for outputs that can store it


def header_pixels(path: Path) -> int:
    """Width x height from the file's header (nothing decoded); 0 when it cannot be read (reading reports why)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # never open a FIFO: that blocks
            return 0
        with PIL.Image.open(path) as image:
            return image.size[0] * image.size[1]
    except Exception:  # noqa: BLE001 - any unreadable header: read_image gives the one-line reason later
        return 0


def plan_batches(jobs: list[Job], files_per_batch: int, pixels_in_flight: int) -> Iterator[tuple[list[Job], int]]:
    """Consecutive jobs in batches of at most files_per_batch whose pixels sum to at most pixels_in_flight (a larger
    file forms a batch of its own); yields (batch, pixels)."""
    batch, pixels = [], 0
    for job in jobs:
        count = header_pixels(job.source)
        if batch and (len(batch) == files_per_batch or pixels + count > pixels_in_flight):
            yield batch, pixels
            batch, pixels = [], 0
        batch.append(job)
        pixels += count
    if batch:
        yield batch, pixels


def run_jobs(pipe, jobs: list[Job], config, kinds: tuple[str, ...], device, tally: Tally, finished) -> None:
    """Colorize `jobs`, counting into `tally` as it goes (so a KeyboardInterrupt leaves a true count)."""
    files_per_batch = max(1, config.batch_size // config.num_samples)
    batches = plan_batches(jobs, files_per_batch, config.pixels_in_flight)
    pool = ThreadPoolExecutor(max_workers=READERS)
    held: list[Job] = []  # claimed and not yet released
    bar = tqdm(total=len(jobs), unit="img", disable=None)

    def start(planned):  # claim the batch's outputs and start reading them
        if planned is None:
            return None
        batch, pixels = planned
        mine = []
        for job in batch:
            if not claims.acquire(job.outputs[0]):
                tally.elsewhere += 1
            elif finished(job):  # another run finished it since we planned
                claims.release(job.outputs[0])
                tally.skipped += 1
            else:
                held.append(job)
                mine.append(job)
        bar.update(len(batch) - len(mine))
        return pixels, [(job, pool.submit(prepare, job, config, device)) for job in mine]

    try:
        current = start(next(batches, None))
        while current is not None:
            planned = next(batches, None)
            ahead = planned is not None and current[0] + planned[1] <= config.pixels_in_flight
            following = start(planned) if ahead else None  # read ahead while this batch runs, within budget
            started, current = current[1], None
            _run_batch(pipe, _collect(started, tally), config, kinds, tally)
            for job, _ in started:
                claims.release(job.outputs[0])
                held.remove(job)
            bar.update(len(started))
            del started  # its futures hold the batch's images: drop them before the next batch is read
            current = following if ahead else start(planned)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        for job in held:  # interrupted: give the unfinished outputs back to other runs
            claims.release(job.outputs[0])
        bar.close()


def prepare(job: Job, config, device) -> Prepared:
    """Read one input and keep only its exact L (on `device`) and its alpha; runs in a reader thread."""
    image = read_image(job.source, config.max_pixels)
    for note in _notes(image):
        report(f"{job.source}: {note}")
    luminance = Luminance(luminance_of(image.rgb, device))
    alpha = None if image.alpha is None else np.rint(image.alpha * 255).astype(np.uint8)
    return Prepared(job, luminance, alpha)


def _notes(image) -> list[str]:
    """One line per thing the user should know about a file that is still colorized."""
    notes = [f"warning: {w}" for w in image.warnings]
    if image.frames > 1:
        notes.append(f"{image.frames} frames; only the first is colorized")
    return notes


def _collect(started: list[tuple[Job, Future]], tally: Tally) -> list[Prepared]:
    prepared = []
    for job, future in started:
        try:
            prepared.append(future.result())
        except ImageReadError as err:
            report(str(err))
            tally.failed += 1
        except Exception as err:  # noqa: BLE001 - one unreadable file must not stop the others
            report(f"{job.source}: cannot read: {type(err).__name__}: {error_line(err)}")
            tally.failed += 1
    return prepared


def _run_batch(pipe, prepared: list[Prepared], config, kinds, tally: Tally) -> None:
    """Colorize and write one batch; when the batch fails as a whole, each file is tried alone."""
    if not prepared:
        return
    try:
        results, priors = _colorize(pipe, prepared, config, kinds)
    except Exception as err:  # noqa: BLE001 - per-file isolation: find the file that fails
        if len(prepared) > 1:
            for one in prepared:
                _run_batch(pipe, [one], config, kinds, tally)
            return
        report(f"{prepared[0].job.source}: colorization failed: {type(err).__name__}: {error_line(err)}")
        tally.failed += 1
        return
    n = config.num_samples
    for index, item in enumerate(prepared):
        try:
            for path, image in zip(item.job.outputs, results[index * n : (index + 1) * n], strict=True):
                alpha = item.alpha if path.suffix.lower() not in (".jpg", ".jpeg") else None
                write_image(path, np.asarray(image), alpha=alpha)
            if config.save_priors:
                write_priors_sidecar(item.job.priors_path, item.job.relative, priors[index * n] if priors else None,
                                     config, scheduler_name(pipe.scheduler))
            tally.done += 1
        except (OSError, ValueError) as err:
            report(f"{item.job.source}: cannot write output: {error_line(err)}")
            tally.failed += 1
        results[index * n : (index + 1) * n] = [None] * n  # written: let the image go


def _colorize(pipe, prepared: list[Prepared], config, kinds) -> tuple[list, list | None]:
    """One pipeline call for every sample of every file; the priors are computed once per file."""
    images, generators = [], []
    for item in prepared:
        for sample in range(config.num_samples):
            images.append(item.luminance)
            generators.append(torch.Generator("cpu").manual_seed(sample_seed(config.seed, item.job.relative, sample)))
    file_priors = pipe.compute_priors([item.luminance for item in prepared], kinds) if kinds else None
    if config.captions is not None:  # the file's caption in place of the captioner's
        file_priors = _with_file_captions(file_priors, [item.job for item in prepared], config.captions)
    priors = [p for p in file_priors for _ in range(config.num_samples)] if file_priors else "none"
    output = pipe(images, prompt=config.prompt, num_inference_steps=config.steps,
                  guidance_scale=config.guidance_scale, generator=generators, resolution=config.resolution,
                  keep_luminance=config.keep_luminance, output_type="pil", priors=priors,
                  seg_strength=config.seg_strength)
    return output.images, output.priors


def _with_file_captions(file_priors, jobs: list[Job], captions_path: str) -> list:
    """Each job's priors with its caption from the --captions file; the sidecar records where it came from."""
    from colordiff.semantics import ImagePriors

    file_priors = file_priors or [ImagePriors() for _ in jobs]
    source = Path(captions_path).resolve().as_posix()
    return [replace(p, caption=job.caption, extra={**p.extra, "caption_source": source})
            for p, job in zip(file_priors, jobs, strict=True)]
