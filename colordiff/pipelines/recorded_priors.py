"""What every colordiff pipeline shares beyond diffusers': a model folder records its prior generators in
semantic_priors.yaml, and LoRA files are read as safetensors only."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from diffusers.loaders import StableDiffusionLoraLoaderMixin

from colordiff.io import atomic_write
from colordiff.semantics.config import PRIORS_FILE
from colordiff.semantics.generators import PriorGenerators


class RecordsPriorGenerators:
    """Mixed in before DiffusionPipeline: `from_pretrained` / `save_pretrained` also read / write the folder's
    semantic_priors.yaml, and the generators travel with the components (`pipe.components`, `from_pipe`).

    Saving records a generator folder inside the model folder by its path relative to the model folder (a
    generator folder inside the source model folder is copied along); one outside is recorded by its absolute path
    and a warning says the folder then only works where that path exists. With `push_to_hub=True` everything,
    semantic_priors.yaml and the model card (README.md) included, is written before the upload."""

    prior_generators: PriorGenerators | None

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        if getattr(pipe, "prior_generators", None) is None:
            pipe.prior_generators = PriorGenerators.from_model(pretrained_model_name_or_path,
                                                               local_files_only=kwargs.get("local_files_only", False))
        return pipe

    @property
    def components(self) -> dict:
        """diffusers' components plus `prior_generators`, so that `type(pipe)(**pipe.components)` keeps the priors."""
        return {**super().components, "prior_generators": self.prior_generators}

    @classmethod
    def from_pipe(cls, pipeline, **kwargs):
        """diffusers' from_pipe, keeping the source pipeline's prior generators (unless `prior_generators=` is
        given)."""
        generators = kwargs.pop("prior_generators", getattr(pipeline, "prior_generators", None))
        new = super().from_pipe(pipeline, **kwargs)
        if hasattr(new, "prior_generators"):
            new.prior_generators = generators
        return new

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs) -> None:
        hub = {k: kwargs.pop(k) for k in ("commit_message", "private", "create_pr", "token", "repo_id") if k in kwargs}
        super().save_pretrained(save_directory, **kwargs)
        folder = Path(save_directory)
        if self.prior_generators is not None:
            self._save_prior_generators(folder)
        if not (folder / "README.md").is_file():
            from colordiff.model_card import write_model_card

            write_model_card(folder)
        if push_to_hub:
            from huggingface_hub import create_repo

            token = hub.get("token")
            repo_id = hub.get("repo_id", str(save_directory).rstrip(os.sep).split(os.sep)[-1])
            repo_id = create_repo(repo_id, exist_ok=True, private=hub.get("private"), token=token).repo_id
            self._upload_folder(str(folder), repo_id, token=token, commit_message=hub.get("commit_message"),
                                create_pr=hub.get("create_pr", False))

    def _save_prior_generators(self, folder: Path) -> None:
        """semantic_priors.yaml in `folder`: generator folders inside the source model folder are copied to the same
        place in `folder`; paths inside `folder` are recorded relative to it."""
        generators = self.prior_generators
        for relative in generators.folders_inside_base():
            source, target = generators.base_dir / relative, folder / relative
            if source.resolve() != target.resolve() and not target.exists():
                shutil.copytree(source, target)
        with atomic_write(folder / PRIORS_FILE) as tmp:
            tmp.write_text(generators.to_yaml(folder))


class SafetensorsLoraLoaderMixin(StableDiffusionLoraLoaderMixin):
    """diffusers' LoRA loading for the pipelines' models (`_lora_model_names`: the U-Net, SeAda's control model) and
    the text encoder, reading safetensors files only: a LoRA folder or hub id without a .safetensors file is an
    error, never an unpickled .bin. Besides LoRA layers a file may hold whole modules that trained fully (e.g. the
    concat U-Net's condition_fuse), listed in its adapter metadata's `modules_to_save` (as train_unet / train_seada
    write them with lora_rank > 0)."""

    _lora_model_names = ("unet",)

    def load_lora_weights(self, pretrained_model_name_or_path_or_dict, adapter_name=None, hotswap: bool = False,
                          **kwargs):
        kwargs.setdefault("use_safetensors", True)
        _refuse_pickles(pretrained_model_name_or_path_or_dict, kwargs)
        low_cpu_mem_usage = kwargs.pop("low_cpu_mem_usage", False)
        if isinstance(pretrained_model_name_or_path_or_dict, dict):
            pretrained_model_name_or_path_or_dict = pretrained_model_name_or_path_or_dict.copy()
        kwargs["return_lora_metadata"] = True
        state_dict, network_alphas, metadata = self.lora_state_dict(pretrained_model_name_or_path_or_dict, **kwargs)
        _check_lora_keys(state_dict, metadata)
        text_encoder = getattr(self, "text_encoder_name", None) if hasattr(self, "text_encoder") else None
        known = {*self._lora_model_names, *([text_encoder] if text_encoder else [])}
        unknown = sorted({key.split(".")[0] for key in state_dict} - known)
        if unknown:
            raise ValueError(f"LoRA keys must start with {' or '.join(f'{n}.' for n in sorted(known))}, got {unknown}")
        common = dict(network_alphas=network_alphas, adapter_name=adapter_name, metadata=metadata, _pipeline=self,
                      low_cpu_mem_usage=low_cpu_mem_usage, hotswap=hotswap)
        for name in self._lora_model_names:
            if any(key.startswith(f"{name}.") for key in state_dict):
                getattr(self, name).load_lora_adapter(state_dict, prefix=name, **common)
        if text_encoder and any(key.startswith(f"{text_encoder}.") for key in state_dict):
            self.load_lora_into_text_encoder(state_dict, text_encoder=self.text_encoder, lora_scale=self.lora_scale,
                                             **common)

    @classmethod
    def lora_state_dict(cls, pretrained_model_name_or_path_or_dict, **kwargs):
        kwargs.setdefault("use_safetensors", True)
        _refuse_pickles(pretrained_model_name_or_path_or_dict, kwargs)
        return super().lora_state_dict(pretrained_model_name_or_path_or_dict, **kwargs)


def _check_lora_keys(state_dict: dict, metadata: dict | None) -> None:
    """Every key is a LoRA parameter or belongs to a module the adapter metadata lists in `modules_to_save`."""
    full = [f"{k.removesuffix('.modules_to_save')}.{n}" for k, names in (metadata or {}).items()
            if k.endswith(".modules_to_save") for n in (names or [])]
    bad = [k for k in state_dict if "lora" not in k and not any(k.startswith(f + ".") for f in full)]
    if bad:
        raise ValueError(f"Invalid LoRA checkpoint: {bad[0]} is neither a LoRA parameter nor in the adapter's "
                         "modules_to_save")


def _refuse_pickles(source, kwargs: dict) -> None:
    """A local LoRA file or folder must be safetensors: diffusers would otherwise fall back to torch.load."""
    if isinstance(source, dict):
        return
    path = Path(source)
    weight_name = kwargs.get("weight_name")
    if path.is_file() or (weight_name and (path / weight_name).is_file()):
        name = path.name if path.is_file() else weight_name
        if not name.endswith(".safetensors"):
            raise ValueError(f"{source}: LoRA weights must be a .safetensors file (got {name})")
    elif path.is_dir() and not any(path.glob("*.safetensors")):
        raise ValueError(f"{source}: no .safetensors LoRA file in this folder")
