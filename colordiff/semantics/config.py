"""Settings of the prior generators (YAML schemas): which registered generator, its weights, its options.

A model folder records its generators in `semantic_priors.yaml` (a PriorsConfig); `source` is a hub id or a folder,
relative folders being relative to that file. configs/semantics/ holds the papers' choices.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from colordiff.config import setting

PRIORS_FILE = "semantic_priors.yaml"  # in a model folder, beside model_index.json


@dataclass
class CaptionerConfig:
    name: str = "blip"  # blip (paper 000) | coca (paper 001) | blip2
    source: str = "Salesforce/blip-image-captioning-large"  # hub id or folder
    revision: str | None = None  # hub branch, tag or commit
    max_new_tokens: int = setting(30, min=1)
    num_beams: int = setting(3, min=1)
    batch_size: int = setting(16, min=1)  # images per forward pass


@dataclass
class ClassifierConfig:
    name: str = "efficientnet"
    source: str = "google/efficientnet-b7"
    revision: str | None = "refs/pr/2"  # the hub's safetensors conversion; main holds a pickle only
    batch_size: int = setting(32, min=1)


@dataclass
class SegmenterConfig:
    name: str = "mask2former"  # stands in for Transfiner (paper 000 [21]), which no package ships
    source: str = "facebook/mask2former-swin-large-coco-instance"
    revision: str | None = "refs/pr/2"  # the hub's safetensors conversion
    score_threshold: float = setting(0.5, min=0, max=1)  # class probability x mean mask probability (Mask2Former's)
    min_area: float = setting(0.002, min=0, max=1)  # fraction of the image; smaller instances are dropped
    max_instances: int = setting(8, min=1)  # the best-scoring ones are kept
    input_size: int = setting(384, min=1)  # the model runs on input_size^2 squares (its training crop size)
    batch_size: int = setting(8, min=1)


@dataclass
class PriorsConfig:
    """The prior generators of a model; a kind left null is not available (asking for it is an error)."""

    captioner: CaptionerConfig | None = None
    classifier: ClassifierConfig | None = None
    segmenter: SegmenterConfig | None = None
    prompt_template: str = "{category}, {caption}"  # the text condition; a missing part drops out with its comma
    drop_phrases: list[str] = field(default_factory=list)  # removed from captions, e.g. "black and white photo of"


KIND_FIELDS = {"caption": "captioner", "category": "classifier", "segmentation": "segmenter"}
