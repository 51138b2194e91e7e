"""Inference pipelines (diffusers DiffusionPipeline subclasses) and the registry the CLI picks them from."""

from colordiff.pipelines.colordiff_pipeline import ColorDiffPipeline, ColorDiffPipelineOutput
from colordiff.pipelines.registry import PIPELINES, load_pipeline, pipeline_class_for

__all__ = ["PIPELINES", "ColorDiffPipeline", "ColorDiffPipelineOutput", "load_pipeline", "pipeline_class_for"]
