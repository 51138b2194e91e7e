"""The part every colordiff pipeline shares: a model folder records its prior generators in semantic_priors.yaml."""

from __future__ import annotations

from pathlib import Path

from colordiff.io import atomic_write
from colordiff.semantics.config import PRIORS_FILE
from colordiff.semantics.generators import PriorGenerators


class RecordsPriorGenerators:
    """Mixed in before DiffusionPipeline: `from_pretrained` / `save_pretrained` also read / write the folder's
    semantic_priors.yaml (local generator folders recorded as absolute paths). The pipeline's __init__ sets
    `self.prior_generators = None`; loading fills it in."""

    prior_generators: PriorGenerators | None

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        pipe.prior_generators = PriorGenerators.from_model(pretrained_model_name_or_path,
                                                           local_files_only=kwargs.get("local_files_only", False))
        return pipe

    def save_pretrained(self, save_directory, **kwargs) -> None:
        super().save_pretrained(save_directory, **kwargs)
        if self.prior_generators is not None:
            with atomic_write(Path(save_directory) / PRIORS_FILE) as tmp:
                tmp.write_text(self.prior_generators.to_yaml())
