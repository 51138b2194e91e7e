"""`colordiff init-model`: write an untrained ColorDiff or SeAda model folder (tiny random, or from SD1.5)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from colordiff.devices import DTYPES
from colordiff.errors import EXIT_OK, UsageError

BASE_MODELS = {"SD15": "stable-diffusion-v1-5/stable-diffusion-v1-5"}  # aliases accepted by `init-model --base`


def run_init_model(output: str, *, tiny: bool, base: str | None, dtype: str, local_files_only: bool, seed: int,
                   overwrite: bool, method: str = "colordiff") -> int:
    """Write an untrained ColorDiff or SeAda model folder (tiny random, or assembled from SD1.5) atomically."""
    from colordiff.pipelines import ColorDiffPipeline
    from colordiff.pipelines.assemble import save_pipeline_atomically
    from colordiff.pipelines.registry import SD_COMPONENTS, ModelLoadError, guarded_load
    from colordiff.pipelines.seada_pipeline import SeAdaPipeline
    from colordiff.testing import tiny_colordiff_pipeline, tiny_seada_pipeline

    builders = {"colordiff": (tiny_colordiff_pipeline, ColorDiffPipeline, "ColorDiff"),
                "seada": (tiny_seada_pipeline, SeAdaPipeline, "SeAda")}
    if method not in builders:
        raise UsageError(f"unknown method {method!r}; choose colordiff or seada")
    build_tiny, cls, name = builders[method]
    target = Path(output)
    if target.exists() and not overwrite:
        raise UsageError(f"{target} exists; pass --overwrite to replace it")
    if tiny:
        pipe = build_tiny(seed)
        if DTYPES[dtype] != torch.float32:
            pipe = pipe.to(dtype=DTYPES[dtype])
    else:
        source = BASE_MODELS.get(base, base)
        try:  # any failure: one line naming the file at fault
            pipe = guarded_load(source, lambda: cls.from_stable_diffusion(source, dtype=DTYPES[dtype],
                                                                          local_files_only=local_files_only),
                                SD_COMPONENTS, local_files_only=local_files_only)
        except ModelLoadError as err:
            raise UsageError(f"cannot load Stable Diffusion weights from {base}: {err.detail}") from None
    save_pipeline_atomically(pipe, target, card={"base_model": None if tiny else source})  # untrained: no training
    print(f"colordiff: wrote {'tiny random' if tiny else 'untrained'} {name} model to {target}", file=sys.stderr)
    return EXIT_OK
