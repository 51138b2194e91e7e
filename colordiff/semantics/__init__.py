"""Semantic prior generators (paper 000, Sec. 3.3; paper 001's captions): captioners, classifier, instance segmenter.

Each loads from a hub id or a local folder (safetensors only), runs batched on the grayscale image, on any device and
dtype. Names in YAML pick them from `GENERATORS`; a model folder records its own in `semantic_priors.yaml`.
"""

from colordiff.semantics.base import PriorGenerator, PriorGeneratorError, grayscale
from colordiff.semantics.captioners import Blip2Captioner, BlipCaptioner, CocaCaptioner
from colordiff.semantics.classifier import EfficientNetClassifier
from colordiff.semantics.config import (
    PRIORS_FILE,
    CaptionerConfig,
    ClassifierConfig,
    PriorsConfig,
    SegmenterConfig,
)
from colordiff.semantics.generators import PRIOR_CHOICES, PriorGenerators, resolve_prior_kinds
from colordiff.semantics.priors import PRIOR_KINDS, ImagePriors, Instances, compose_prompt
from colordiff.semantics.registry import GENERATORS, build_generator
from colordiff.semantics.segmenter import Mask2FormerSegmenter

__all__ = [
    "GENERATORS",
    "PRIORS_FILE",
    "PRIOR_CHOICES",
    "PRIOR_KINDS",
    "Blip2Captioner",
    "BlipCaptioner",
    "CaptionerConfig",
    "ClassifierConfig",
    "CocaCaptioner",
    "EfficientNetClassifier",
    "ImagePriors",
    "Instances",
    "Mask2FormerSegmenter",
    "PriorGenerator",
    "PriorGeneratorError",
    "PriorGenerators",
    "PriorsConfig",
    "SegmenterConfig",
    "build_generator",
    "compose_prompt",
    "grayscale",
    "resolve_prior_kinds",
]
