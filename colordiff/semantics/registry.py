"""Prior generators by name: YAML names a generator (`name: blip`), never an import string."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from colordiff.config import error_line
from colordiff.semantics.base import PriorGenerator, PriorGeneratorError, resolve_source
from colordiff.semantics.captioners import Blip2Captioner, BlipCaptioner, CocaCaptioner
from colordiff.semantics.classifier import EfficientNetClassifier
from colordiff.semantics.config import CaptionerConfig, ClassifierConfig, SegmenterConfig
from colordiff.semantics.segmenter import Mask2FormerSegmenter

GENERATORS: dict[str, type[PriorGenerator]] = {
    "blip": BlipCaptioner,
    "blip2": Blip2Captioner,
    "coca": CocaCaptioner,
    "efficientnet": EfficientNetClassifier,
    "mask2former": Mask2FormerSegmenter,
}
CONFIG_KINDS = {CaptionerConfig: "captioner", ClassifierConfig: "classifier", SegmenterConfig: "segmenter"}


def generator_class(kind: str, name: str) -> type[PriorGenerator]:
    """The registered class of a `kind` ("captioner", "classifier", "segmenter") named `name`; unknown: an error."""
    cls = GENERATORS.get(name)
    if cls is None or cls.kind != kind:
        known = ", ".join(sorted(n for n, c in GENERATORS.items() if c.kind == kind))
        raise PriorGeneratorError(f"unknown {kind} {name!r}; known: {known}")
    return cls


def build_generator(config: CaptionerConfig | ClassifierConfig | SegmenterConfig, base_dir: str | Path | None = None,
                    device="cpu", dtype=torch.float32, local_files_only: bool = False) -> PriorGenerator:
    """Load the generator a config names from its hub id or folder (relative folders against `base_dir`).

    Any failure becomes one PriorGeneratorError line naming the generator, its source and the reason.
    """
    kind = CONFIG_KINDS[type(config)]
    cls = generator_class(kind, config.name)
    options = {k: v for k, v in asdict(config).items() if k not in ("name", "source", "revision")}
    source = None
    try:
        source = resolve_source(config.source, base_dir)
        return cls.from_pretrained(source, revision=config.revision, local_files_only=local_files_only,
                                   device=device, dtype=dtype, **options)
    except Exception as err:  # noqa: BLE001 - hub, file and format errors all become one clear line
        reason = error_line(err)
        if source is not None and not Path(source).is_dir():  # "a/b" is a hub id unless such a folder exists
            reason = f"no such folder{f' under {base_dir}' if base_dir else ''}, and as a hub id: {reason}"
        raise PriorGeneratorError(f"cannot load {kind} '{config.name}' from {config.source}: {reason}") from err
