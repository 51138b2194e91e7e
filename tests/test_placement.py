"""Device placement of every training task, without a GPU: each task is built with an accelerator stand-in whose
device is `meta` (not the CPU). Its loss then runs there, so a module left on the CPU or a tensor made on the CPU and
mixed with the device's fails as it would on a GPU; the pipeline its validation runs (and its export writes) must
hold every module on the device, and a frozen module cast to the mixed-precision dtype must have its exact weights
kept for the export. On a CUDA machine (the `gpu` test) each task also takes a real bf16 step and validates."""

import contextlib
from pathlib import Path

import numpy as np
import pytest
import torch

from colordiff.config import load_config
from colordiff.data import collate
from colordiff.testing import tiny_colordiff_pipeline, tiny_seada_pipeline, write_captioned_images

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny"
META = torch.device("meta")
pytestmark = pytest.mark.usefixtures("one_thread")


class MetaAccelerator:
    """What the tasks read of accelerate's Accelerator, on a device that is not the CPU; `prepare` moves the trained
    modules there, as accelerate's device placement does."""

    device = META
    mixed_precision = "bf16"
    is_main_process = True
    num_processes = 1
    process_index = 0

    def main_process_first(self):
        return contextlib.nullcontext()

    def autocast(self):
        return contextlib.nullcontext()

    def print(self, *args, **kwargs):
        pass

    def register_save_state_pre_hook(self, hook):
        pass

    def register_load_state_pre_hook(self, hook):
        pass

    def prepare(self, modules: dict) -> dict:
        return {name: module.to(self.device) for name, module in modules.items()}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("placement")
    folders = {"colordiff": root / "colordiff", "seada": root / "seada"}
    tiny_colordiff_pipeline().save_pretrained(folders["colordiff"], safe_serialization=True)
    tiny_seada_pipeline().save_pretrained(folders["seada"], safe_serialization=True)
    (root / "data").mkdir()
    folders["data"] = write_captioned_images(root / "data", 2, 64, 64)
    return folders


def _task(kind: str, models: dict, tmp_path: Path, **overrides):
    """(task module, config) of one task built from its tiny recipe."""
    from colordiff.training import decoder, distill, seada, unet

    recipes = {"unet": (unet, unet.TrainUNetConfig, ["unet.yaml"]),
               "lora": (unet, unet.TrainUNetConfig, ["unet.yaml", "unet_lora.yaml"]),
               "decoder": (decoder, decoder.TrainDecoderConfig, ["decoder.yaml"]),
               "distill": (distill, distill.DistillConfig, ["distill_lcm.yaml"]),
               "seada": (seada, seada.TrainSeAdaConfig, ["seada_stage1.yaml"]),
               "seada_lora": (seada, seada.TrainSeAdaConfig, ["seada_stage1.yaml", "seada_lora.yaml"])}
    module, schema, files = recipes[kind]
    base = models["seada"] if kind.startswith("seada") else models["colordiff"]
    settings = {"pretrained_model_name_or_path": base, "output_dir": tmp_path / "out", "train_data_dir": models["data"],
                "caption_file": models["data"] / "captions.jsonl", "train_batch_size": 2, **overrides}
    return module, load_config(schema, [TINY / f for f in files], [f"{k}={v}" for k, v in settings.items()])


def _off_device(modules: dict) -> list[str]:
    """The parameters and buffers of `modules` that are not on the meta device."""
    return [f"{name}.{key}" for name, module in modules.items() if isinstance(module, torch.nn.Module)
            for key, tensor in [*module.named_parameters(), *module.named_buffers()] if tensor.device != META]


TASKS = [("unet", {}), ("lora", {}), ("decoder", {}), ("distill", {}), ("seada", {"stage": 0}),
         ("seada", {"stage": 1}), ("seada", {"stage": 2}), ("seada", {"stage": 3}), ("seada_lora", {"stage": 2})]


def _new_task(module, config, accelerator):
    classes = {"unet": "UNetTask", "decoder": "DecoderTask", "distill": "DistillTask", "seada": "SeAdaTask"}
    return getattr(module, classes[module.__name__.rsplit(".", 1)[1]])(config, accelerator)


def _build(module, config, precision: str):
    accelerator = MetaAccelerator()
    accelerator.mixed_precision = precision
    task = _new_task(module, config, accelerator)
    return task, accelerator.prepare(task.trainable())


def _validation_modules(module, task, modules, config, monkeypatch) -> dict:
    """The modules of the pipeline the task's validation runs (and its export writes)."""
    seen = []
    monkeypatch.setattr(module, "validation_grid", lambda pipe, config: seen.append(pipe))
    task.validate(modules, config)
    (pipe,) = seen
    return {k: v for k, v in pipe.components.items() if isinstance(v, torch.nn.Module)}


@pytest.mark.parametrize(("kind", "overrides"), TASKS, ids=[f"{k}{o.get('stage', '')}" for k, o in TASKS])
def test_every_module_a_task_uses_is_on_the_accelerator_device(kind, overrides, models, tmp_path, monkeypatch):
    module, config = _task(kind, models, tmp_path, **overrides)
    # float32: the loss runs on the device (bf16 steps need accelerate's autocast, which the meta device has not)
    task, modules = _build(module, config, "no")
    batch = collate([task.dataset[i] for i in range(2)])  # on the CPU, as the data loader gives it
    loss = task.loss(modules, batch)  # raises if a CPU module or tensor meets the device's
    assert loss.device == META and loss.ndim == 0
    # the tables a step indexes stay on the device (a CPU tensor moved there each step waits for the GPU each time)
    tables = {**vars(task), **vars(task.schedule)} if hasattr(task, "schedule") else vars(task)
    assert [name for name, value in tables.items() if isinstance(value, torch.Tensor) and value.device != META] == []
    assert _off_device(_validation_modules(module, task, modules, config, monkeypatch)) == []

    # bf16, as every GPU recipe: the same placement, and each frozen module cast to bf16 keeps its exact weights
    # for the export (which writes the validation pipeline's modules)
    task, modules = _build(module, config, "bf16")
    components = _validation_modules(module, task, modules, config, monkeypatch)
    assert _off_device(components) == [], "left on the CPU by the validation pipeline"
    for name, part in components.items():
        if part.dtype == torch.bfloat16:
            assert id(part) in task.kept, f"{name}: cast to bf16 without its exact weights kept for the export"


@pytest.mark.gpu
@pytest.mark.parametrize(("kind", "overrides"), TASKS, ids=[f"{k}{o.get('stage', '')}" for k, o in TASKS])
def test_every_task_takes_a_bf16_step_and_validates_on_the_gpu(kind, overrides, models, tmp_path, fresh_accelerate):
    """The same tasks with accelerate's real bf16 wrapper on CUDA: a step's loss and gradients are finite, and the
    validation pipeline colorizes."""
    from accelerate import Accelerator

    module, config = _task(kind, models, tmp_path, validation_inference_steps=2,
                           validation_images=f"[{REPO / 'examples' / 'photos' / 'kodim05.jpg'}]", **overrides)
    accelerator = Accelerator(mixed_precision="bf16")
    task = _new_task(module, config, accelerator)
    trainable = task.trainable()
    modules = dict(zip(trainable, accelerator.prepare(*trainable.values()), strict=True))
    loss = task.loss(modules, collate([task.dataset[i] for i in range(2)]))
    accelerator.backward(loss)
    grads = [p.grad for m in modules.values() for p in m.parameters() if p.requires_grad]
    assert torch.isfinite(loss) and grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    grid = task.validate({k: accelerator.unwrap_model(m) for k, m in modules.items()}, config)
    assert grid is not None and np.isfinite(np.asarray(grid, dtype=np.float32)).all()
