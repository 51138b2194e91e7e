"""Which pipeline class a model folder holds, by the `_class_name` in its model_index.json."""

from __future__ import annotations

from pathlib import Path

from diffusers import DiffusionPipeline

from colordiff.pipelines.colordiff_pipeline import ColorDiffPipeline
from colordiff.pipelines.seada_pipeline import SeAdaPipeline

PIPELINES: dict[str, type[DiffusionPipeline]] = {"ColorDiffPipeline": ColorDiffPipeline, "SeAdaPipeline": SeAdaPipeline}


def pipeline_class_for(model: str | Path, **hub_kwargs) -> type[DiffusionPipeline]:
    """The registered pipeline class of a model folder or hub id (read from its model_index.json)."""
    index = DiffusionPipeline.load_config(str(model), **hub_kwargs)
    name = index.get("_class_name")
    if name not in PIPELINES:
        raise ValueError(f"{model}: model_index.json names pipeline {name!r}; known: {', '.join(sorted(PIPELINES))}")
    return PIPELINES[name]


def load_pipeline(model: str | Path, dtype=None, **hub_kwargs) -> DiffusionPipeline:
    """Load a ColorDiff (or other registered) model folder / hub id with safetensors weights only."""
    cls = pipeline_class_for(model, **hub_kwargs)
    kwargs = {"use_safetensors": True, **hub_kwargs}
    if dtype is not None:
        kwargs["dtype"] = dtype
    return cls.from_pretrained(str(model), **kwargs)

