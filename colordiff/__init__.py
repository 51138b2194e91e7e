"""colordiff: ColorDiff and SeAda, diffusion-based automatic image colorization.

Top-level names import lazily, so `colordiff --help` and light modules (color, io) start without diffusers.
Importing colordiff makes `diffusers.DiffusionPipeline.from_pretrained` and `AutoPipelineForImage2Image` load
colordiff model folders (see diffusers_names.py).
"""

import importlib

from colordiff.diffusers_names import install as _name_pipelines_in_diffusers

__version__ = "0.1.0"

_LAZY = {
    "ColorDiffPipeline": "colordiff.pipelines",
    "ColorDiffPipelineOutput": "colordiff.pipelines",
    "SeAdaPipeline": "colordiff.pipelines",
    "load_pipeline": "colordiff.pipelines",
    "ConcatUNet2DConditionModel": "colordiff.models",
    "LuminanceAwareAutoencoderKL": "colordiff.models",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'colordiff' has no attribute {name!r}")


_name_pipelines_in_diffusers()
