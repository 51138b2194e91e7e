"""What the colorize jobs share: `colordiff colorize`, `colordiff colorize-video` and the `colordiff demo` web app.

The device and dtype of a run, the model and the prior generators it needs (loaded before any input, so a broken
model or generator is a usage error up front), the output folder checked writable, the seed of each output, the
priors sidecar (--save-priors) and the one-line reports.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import torch
from tqdm.auto import tqdm

from colordiff.captions_file import priors_beside_captions
from colordiff.config import error_line
from colordiff.devices import DTYPES
from colordiff.errors import UsageError
from colordiff.io import atomic_write
from colordiff.schedulers import make_scheduler


def report(message: str) -> None:
    """One line on stderr, `colordiff: <message>`, written above any progress bar."""
    tqdm.write(f"colordiff: {message}", file=sys.stderr)


def resolve_device_dtype(device: str, dtype: str, state) -> tuple[torch.device, torch.dtype]:
    """The run's device ("auto": the accelerate process's) and dtype ("auto": bfloat16 on CUDA, else float32)."""
    resolved = state.device if device == "auto" else torch.device(device)
    if dtype == "auto":
        return resolved, torch.bfloat16 if resolved.type == "cuda" else torch.float32
    return resolved, DTYPES[dtype]


def load_model(config, device: torch.device, dtype: torch.dtype):
    """The pipeline of `config.model` (with `config.scheduler` when one is named) on `device`; a UsageError of one
    line when it cannot be loaded."""
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


def prepare_priors(pipe, config, device: torch.device, dtype: torch.dtype) -> tuple[str, ...]:
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


def sample_seed(seed: int, relative: Path, sample: int) -> int:
    """A seed that depends only on (seed, file, sample): results ignore batch size, order and process count.

    The path is hashed as the filesystem's bytes (os.fsencode), so any name the filesystem allows has a seed."""
    name = os.fsencode(relative.as_posix())
    digest = hashlib.sha256(f"{seed}\0".encode() + name + f"\0{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def priors_sidecar(folder: Path, relative: Path) -> Path:
    """The priors sidecar of an input whose outputs go to `folder`: <folder>/<stem>.priors.json (one per input)."""
    return folder / f"{relative.stem}.priors.json"


def write_priors_sidecar(path: Path, relative: Path, priors, settings, scheduler: str) -> None:
    """The JSON sidecar of one input (`relative`, its path as named in the run), written atomically: the priors
    used (masks as run lengths), the prompt and the sampler that used them (`settings`: a ColorizeConfig)."""
    from colordiff.semantics import ImagePriors

    data = (priors or ImagePriors(extra={"prompt": settings.prompt or ""})).to_dict()
    data.update(source=relative.as_posix(), seg_strength=settings.seg_strength, scheduler=scheduler,
                steps=settings.steps, guidance_scale=settings.guidance_scale)
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(data))
