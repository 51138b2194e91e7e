"""The prior generators a model records (its semantic_priors.yaml), loaded on first use and run as batches."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from colordiff.config import load_config, to_yaml
from colordiff.semantics.base import PriorGenerator, grayscale, resolve_source
from colordiff.semantics.config import KIND_FIELDS, PRIORS_FILE, PriorsConfig
from colordiff.semantics.priors import PRIOR_KINDS, ImagePriors, compose_prompt
from colordiff.semantics.registry import CONFIG_KINDS, build_generator, generator_class

PRIOR_CHOICES = ("auto", "none", "all", *PRIOR_KINDS)


def resolve_prior_kinds(priors: str | Sequence[str] | None, available: Sequence[str], origin: str) -> tuple[str, ...]:
    """Which priors to compute: None / "auto" = every one `available`; "none"; "all"; names, or comma-separated.

    Asking for one that is not available is an error naming `origin` (e.g. "model models/x") and the missing
    generator, so a run never silently goes without a prior it was asked for.
    """
    if priors is None or priors == "auto":
        return tuple(k for k in PRIOR_KINDS if k in available)
    names = [n.strip() for n in (priors.split(",") if isinstance(priors, str) else priors) if n.strip()]
    if names == ["none"]:
        return ()
    if names == ["all"]:
        names = list(PRIOR_KINDS)
    if not names:
        return ()
    unknown = [n for n in names if n not in PRIOR_KINDS]
    if unknown:
        raise ValueError(f"unknown priors {unknown}; choose {', '.join(PRIOR_CHOICES)} "
                         "or a comma-separated list of caption, category, segmentation")
    missing = [n for n in names if n not in available]
    if missing:
        needed = ", ".join(f"{KIND_FIELDS[n]} (needed for the {n} prior)" for n in missing)
        raise ValueError(f"{origin} records no {needed}: name one in its {PRIORS_FILE} (see configs/semantics/) "
                         "or pass precomputed priors")
    return tuple(k for k in PRIOR_KINDS if k in names)


class PriorGenerators:
    """The generators of a PriorsConfig; each is loaded the first time it is needed, onto the device asked for."""

    def __init__(self, config: PriorsConfig, base_dir: str | Path | None = None, local_files_only: bool = False):
        self.config, self.local_files_only = config, local_files_only
        self.base_dir = None if base_dir is None else Path(base_dir)
        self._loaded: dict[str, PriorGenerator] = {}
        for kind in self.available:  # unknown names fail now, not in the middle of a batch job
            spec = getattr(config, KIND_FIELDS[kind])
            generator_class(CONFIG_KINDS[type(spec)], spec.name)
        compose_prompt(config.prompt_template)  # a template with unknown fields fails now too

    @classmethod
    def from_file(cls, path: str | Path, local_files_only: bool = False) -> PriorGenerators:
        """A semantic_priors.yaml (or any PriorsConfig YAML); relative folders in it are relative to the file."""
        return cls(load_config(PriorsConfig, [path]), Path(path).parent, local_files_only)

    @classmethod
    def from_model(cls, model: str | Path, local_files_only: bool = False) -> PriorGenerators | None:
        """The generators a model folder or hub model records in its semantic_priors.yaml; None if it has none."""
        path = Path(model) / PRIORS_FILE
        if Path(model).is_dir():
            return cls.from_file(path, local_files_only) if path.is_file() else None
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

        try:
            return cls.from_file(hf_hub_download(str(model), PRIORS_FILE, local_files_only=local_files_only),
                                 local_files_only)
        except (EntryNotFoundError, LocalEntryNotFoundError):
            return None

    @property
    def available(self) -> tuple[str, ...]:
        """The priors ("caption", "category", "segmentation") whose generator is recorded."""
        return tuple(k for k in PRIOR_KINDS if getattr(self.config, KIND_FIELDS[k]) is not None)

    def generator(self, kind: str, device="cpu", dtype=torch.float32) -> PriorGenerator:
        """The generator of prior `kind`, loaded once, moved to `device` / `dtype` when asked elsewhere."""
        if kind not in self.available:
            raise ValueError(f"no {KIND_FIELDS.get(kind, kind)} recorded for the {kind} prior")
        if kind not in self._loaded:
            self._loaded[kind] = build_generator(getattr(self.config, KIND_FIELDS[kind]), self.base_dir, device,
                                                 dtype, self.local_files_only)
        generator = self._loaded[kind]
        if generator.device != torch.device(device) or generator.dtype != dtype:
            generator.to(device, dtype)
        return generator

    def compute(self, images: Sequence, kinds: Sequence[str], device="cpu", dtype=torch.float32) -> list[ImagePriors]:
        """The priors `kinds` of each image, computed on its grayscale version, each generator run as batches."""
        gray = grayscale(images) if kinds else []
        results = {kind: self.generator(kind, device, dtype)(gray) for kind in kinds}
        return [ImagePriors(caption=results["caption"][i] if "caption" in results else None,
                            category=results["category"][i] if "category" in results else None,
                            instances=results["segmentation"][i] if "segmentation" in results else None)
                for i in range(len(images))]

    def prompt(self, priors: ImagePriors) -> str:
        return compose_prompt(self.config.prompt_template, priors.category, priors.caption, self.config.drop_phrases)

    def local_sources(self) -> dict[str, Path]:
        """{config field: resolved local folder} of the generators that load from a folder on this machine."""
        found = {}
        for field in KIND_FIELDS.values():
            spec = getattr(self.config, field)
            if spec is None:
                continue
            try:
                source = resolve_source(spec.source, self.base_dir)
            except FileNotFoundError:
                continue
            if Path(source).is_dir():
                found[field] = Path(source).resolve()
        return found

    def folders_inside_base(self) -> list[Path]:
        """The generator folders that lie inside the folder this config was read from, relative to it."""
        if self.base_dir is None:
            return []
        base = self.base_dir.resolve()
        return [folder.relative_to(base) for folder in self.local_sources().values() if folder.is_relative_to(base)]

    def to_yaml(self, target_dir: str | Path | None = None) -> str:
        """The config for recording in the model folder `target_dir`: local generator folders inside it (or inside
        the folder this config came from, which the saving pipeline copies into it) as paths relative to it, others
        as absolute paths, with a warning that the model folder then works only where that path exists."""
        import warnings

        target = None if target_dir is None else Path(target_dir).resolve()
        base = None if self.base_dir is None else self.base_dir.resolve()
        specs = {}
        for field, folder in self.local_sources().items():
            spec = getattr(self.config, field)
            if target is not None and base is not None and folder.is_relative_to(base):
                recorded = folder.relative_to(base).as_posix()  # copied to the same place under target_dir
            elif target is not None and folder.is_relative_to(target):
                recorded = folder.relative_to(target).as_posix()
            else:
                recorded = str(folder)
                if target is not None:
                    warnings.warn(f"{PRIORS_FILE}: {field} is the folder {folder}, outside the model folder "
                                  f"{target}; it is recorded by its absolute path, which other machines lack",
                                  stacklevel=3)
            specs[field] = replace(spec, source=recorded)
        return to_yaml(replace(self.config, **specs))
