"""colordiff: ColorDiff and SeAda, diffusion-based automatic image colorization.

Top-level names import lazily, so `colordiff --help` and light modules (color, io) start without diffusers.
"""

import importlib

__version__ = "0.1.0"

_LAZY = {
    "ColorDiffPipeline": "colordiff.pipelines",
    "ColorDiffPipelineOutput": "colordiff.pipelines",
    "ConcatUNet2DConditionModel": "colordiff.models",
    "LuminanceAwareAutoencoderKL": "colordiff.models",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'colordiff' has no attribute {name!r}")
