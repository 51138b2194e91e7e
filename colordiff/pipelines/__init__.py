"""Inference pipelines (diffusers DiffusionPipeline subclasses) and the registry the CLI picks them from.

Importing this package names the two pipeline classes in diffusers, so that diffusers' generic entry points load
colordiff model folders: `DiffusionPipeline.from_pretrained(folder)` looks the `_class_name` of model_index.json up
as an attribute of the `diffusers` module, and `AutoPipelineForImage2Image` in its image-to-image mapping. Loading
pipeline code from a model folder would need `trust_remote_code`; setting these three names is all that is changed
in diffusers. `import colordiff` alone does not import diffusers (the command line starts without it).
"""

import diffusers
from diffusers.pipelines import auto_pipeline

from colordiff.pipelines.base import ColorDiffPipelineOutput
from colordiff.pipelines.colordiff_pipeline import ColorDiffPipeline
from colordiff.pipelines.registry import PIPELINES, load_pipeline, pipeline_class_for
from colordiff.pipelines.seada_pipeline import SeAdaPipeline

__all__ = ["PIPELINES", "ColorDiffPipeline", "ColorDiffPipelineOutput", "SeAdaPipeline", "load_pipeline",
           "pipeline_class_for"]

diffusers.ColorDiffPipeline, diffusers.SeAdaPipeline = ColorDiffPipeline, SeAdaPipeline
auto_pipeline.AUTO_IMAGE2IMAGE_PIPELINES_MAPPING.setdefault("colordiff", ColorDiffPipeline)  # AutoPipeline model names
auto_pipeline.AUTO_IMAGE2IMAGE_PIPELINES_MAPPING.setdefault("seada", SeAdaPipeline)
