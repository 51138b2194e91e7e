"""Inference pipelines (diffusers DiffusionPipeline subclasses) and the registry the CLI picks them from."""

from colordiff.pipelines.colordiff_pipeline import ColorDiffPipeline, ColorDiffPipelineOutput
from colordiff.pipelines.registry import PIPELINES, load_pipeline, pipeline_class_for
from colordiff.pipelines.seada_pipeline import SeAdaPipeline

__all__ = ["PIPELINES", "ColorDiffPipeline", "ColorDiffPipelineOutput", "SeAdaPipeline", "load_pipeline",
           "pipeline_class_for"]

# AutoPipelineForImage2Image.from_pretrained(folder) finds these classes by name (see colordiff/diffusers_names.py)
from colordiff.diffusers_names import register_auto_pipelines  # noqa: E402

register_auto_pipelines()
