"""LoRA training (peft) for the U-Net, SeAda's control model and the LCM student: the settings, the adapter, the fused
model and the diffusers-format LoRA file.

With lora_rank > 0 the model's own weights stay frozen; a LoRA (W + (alpha / r) B A, B = 0 at the start, so the
model is unchanged until trained) on `lora_target_modules` trains, together with the modules the task names as fully
trained (those with no pretrained weights to adapt, e.g. the concat U-Net's condition_fuse conv). The exported model
folder holds the LoRA fused into the weights; the LoRA file holds, per component prefix (`unet.`, `control.`), peft's
LoRA state dict plus the fully trained modules' weights, with the adapter config as metadata naming those modules in
`modules_to_save`: diffusers' `load_lora_weights` rebuilds the same model on top of the untrained one.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from colordiff.config import setting
from colordiff.io import atomic_folder

LORA_FILE = "pytorch_lora_weights.safetensors"  # diffusers' default weight name for load_lora_weights
ADAPTER = "default"


@dataclass
class LoraSettings:
    """Mixed into a task config: 0 trains the whole model (the papers' recipes), > 0 a LoRA of that rank."""

    lora_rank: int = setting(0, min=0)
    lora_alpha: float | None = setting(None, above=0)  # None: lora_rank (LoRA scale 1)
    lora_target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])

    def config_checks(self):
        yield from super().config_checks()
        if self.lora_rank > 0 and not self.lora_target_modules:
            yield "lora_target_modules", "must name at least one module when lora_rank > 0"


def _matches(name: str, targets: list[str]) -> bool:
    """peft's rule for a list of target names: the module's full name, or its ending after a dot."""
    return any(name == t or name.endswith(f".{t}") for t in targets)


def _inside(name: str, prefixes: list[str]) -> bool:
    return any(name == p or name.startswith(f"{p}.") for p in prefixes)


def add_lora(model: nn.Module, settings: LoraSettings, fully_trained: list[str] = (),
             within: list[str] | None = None) -> None:
    """Freeze `model`, add a LoRA on the layers named by settings.lora_target_modules (inside the submodules
    `within`, default everywhere, and outside `fully_trained`), and make the `fully_trained` modules (full names)
    trainable as they are. The adapter config is kept in `model.peft_config` (as diffusers' PeftAdapterMixin keeps
    it), with `modules_to_save` = `fully_trained`: the loader wraps those modules and loads their weights."""
    from peft import LoraConfig, inject_adapter_in_model

    fully_trained = list(fully_trained)
    targets = [name for name, module in model.named_modules()
               if _matches(name, settings.lora_target_modules) and not _inside(name, fully_trained)
               and (within is None or _inside(name, within)) and isinstance(module, (nn.Linear, nn.Conv2d))]
    if not targets:
        raise ValueError(f"lora_target_modules {settings.lora_target_modules} name no layer of "
                         f"{type(model).__name__}")
    model.requires_grad_(False)
    config = LoraConfig(r=settings.lora_rank, lora_alpha=settings.lora_alpha or settings.lora_rank,
                        target_modules=targets)
    inject_adapter_in_model(config, model, adapter_name=ADAPTER)  # lora_B = 0: the model is unchanged
    for name in fully_trained:
        model.get_submodule(name).requires_grad_(True)
    model.peft_config = {ADAPTER: dataclasses.replace(config, modules_to_save=fully_trained or None)}


def has_lora(model: nn.Module) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer) for m in model.modules())


def fused(model: nn.Module) -> nn.Module:
    """A copy of `model` with its LoRA merged into the weights and the LoRA layers removed (a plain model that
    save_pretrained writes as usual); a model without LoRA is returned as it is."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    if not has_lora(model):
        return model
    plain = copy.deepcopy(model)
    layers = [(name, m) for name, m in plain.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, layer in layers:
        layer.merge()  # W <- W + (alpha / r) B A
        parent, _, child = name.rpartition(".")
        setattr(plain.get_submodule(parent) if parent else plain, child, layer.get_base_layer())
    for attribute in ("peft_config", "_hf_peft_config_loaded"):
        plain.__dict__.pop(attribute, None)
    return plain


def lora_state_dict(model: nn.Module) -> dict:
    """peft's LoRA state dict (`<module>.lora_A.weight`, ...) plus the fully trained modules' weights under their
    own names (`condition_fuse.weight`): what diffusers' loader expects for an adapter with modules_to_save."""
    from peft.utils import get_peft_model_state_dict

    state = dict(get_peft_model_state_dict(model, adapter_name=ADAPTER))
    for name in model.peft_config[ADAPTER].modules_to_save or []:
        state.update({f"{name}.{k}": v for k, v in model.get_submodule(name).state_dict().items()})
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def adapter_metadata(model: nn.Module) -> dict:
    """The adapter config as diffusers stores it in a LoRA file (JSON-able: sets as sorted lists)."""
    config = model.peft_config[ADAPTER].to_dict()
    return {k: sorted(v) if isinstance(v, set) else v for k, v in config.items()}


def save_lora_file(folder: str | Path, components: dict[str, nn.Module]) -> Path:
    """Write `<folder>/pytorch_lora_weights.safetensors` atomically: each component's LoRA state dict with keys
    prefixed by its pipeline name (`unet.`, `control.`) and its adapter config as metadata, the layout of diffusers'
    StableDiffusionLoraLoaderMixin.save_lora_weights."""
    from diffusers.loaders.lora_base import LoraBaseMixin

    layers = {prefix: lora_state_dict(m) for prefix, m in components.items()}
    metadata = {prefix: adapter_metadata(m) for prefix, m in components.items()}
    with atomic_folder(folder) as staging:
        staging.mkdir()
        LoraBaseMixin._save_lora_weights(staging, lora_layers=layers, lora_metadata=metadata, weight_name=LORA_FILE)
    return Path(folder) / LORA_FILE
