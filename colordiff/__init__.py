"""colordiff: ColorDiff and SeAda, diffusion-based automatic image colorization.

Top-level names import lazily, so `colordiff --help` and light modules (color, io) start without diffusers.
`import colordiff.pipelines` (also done by using `colordiff.ColorDiffPipeline` or `load_pipeline`) makes
`diffusers.DiffusionPipeline.from_pretrained` and `AutoPipelineForImage2Image` load colordiff model folders.
"""

import importlib

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
