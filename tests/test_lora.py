"""LoRA training (lora_rank > 0) of the ColorDiff U-Net and of SeAda's control model with tiny models: only the LoRA
and the fully trained new modules change, the base weights stay, resume is exact, and the fused model folder equals
the untrained model with the diffusers-format LoRA file loaded through `load_lora_weights`."""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from colordiff.config import ConfigError, load_config
from colordiff.pipelines import load_pipeline
from colordiff.testing import write_captioned_images

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Four colorful 64 px images and their caption cache."""
    return write_captioned_images(tmp_path_factory.mktemp("lora_data"), 4, 64, 64)


def _run(schema, recipes: list[Path], **overrides) -> Path:
    from accelerate.state import AcceleratorState, GradientState

    settings = {"validation_images": [], "max_train_steps": 3, "checkpointing_steps": 2, **overrides}
    config = load_config(schema, recipes, [f"{k}={v}" for k, v in settings.items()])
    try:
        if schema.__name__ == "TrainUNetConfig":
            from colordiff.training.unet import main
        else:
            from colordiff.training.seada import main
        return main(config)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def _unet_run(base: Path, data: Path, out: Path, **overrides) -> Path:
    from colordiff.training.unet import TrainUNetConfig

    return _run(TrainUNetConfig, [TINY / "unet.yaml", TINY / "unet_lora.yaml"], pretrained_model_name_or_path=base,
                output_dir=out, train_data_dir=data, **overrides)


def _lora_keys(folder: Path) -> tuple[dict, dict]:
    path = folder / "pytorch_lora_weights.safetensors"
    with safe_open(path, "pt") as f:
        metadata = json.loads(f.metadata()["lora_adapter_metadata"])
    return load_file(path), metadata


def _unet_call(unet, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    size = unet.config.sample_size
    z_t, z_c = torch.randn(2, 4, size, size, generator=g), torch.randn(2, 4, size, size, generator=g)
    text = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        return unet(z_t, torch.tensor([999, 10]), text, condition_latents=z_c).sample


@pytest.fixture(scope="module")
def unet_lora(tmp_path_factory, tiny_model_dir, data):
    out = tmp_path_factory.mktemp("unet_lora")
    _unet_run(tiny_model_dir, data, out)
    return out


def test_unet_lora_trains_only_the_lora_and_the_fuse_conv(unet_lora, tiny_model_dir):
    base, model = load_pipeline(tiny_model_dir).unet.state_dict(), load_pipeline(unet_lora / "model").unet
    exported = model.state_dict()
    assert exported.keys() == base.keys()  # the LoRA is fused: a plain concat U-Net
    changed = {k for k in base if not torch.equal(exported[k], base[k])}
    projections = (".to_q.weight", ".to_k.weight", ".to_v.weight", ".to_out.0.weight")
    assert "condition_fuse.weight" in changed and any(k.endswith(projections) for k in changed)
    assert all(k.startswith("condition_fuse.") or k.endswith(projections) for k in changed), sorted(changed)[:5]
    # the checkpoint: base weights as they were, the LoRA beside them
    checkpoint = load_file(unet_lora / "checkpoint-3" / "model.safetensors")
    frozen = {k.replace(".base_layer", ""): v for k, v in checkpoint.items() if "lora_" not in k}
    assert any("lora_B" in k for k in checkpoint)
    assert all(torch.equal(v, base[k]) for k, v in frozen.items() if not k.startswith("condition_fuse.")), "base"
    state, metadata = _lora_keys(unet_lora / "lora")
    assert all(k.startswith("unet.") for k in state) and metadata["unet.r"] == 4
    assert metadata["unet.lora_alpha"] == 8 and metadata["unet.modules_to_save"] == ["condition_fuse"]
    assert {"unet.condition_fuse.weight", "unet.condition_fuse.bias"} <= state.keys()
    assert any(k.endswith(".to_q.lora_A.weight") for k in state)
    card = (unet_lora / "model" / "README.md").read_text()
    assert "lora" in card.split("---")[1] and "| `lora_rank` | `4` |" in card


def test_unet_lora_file_on_the_untrained_model_equals_the_fused_folder(unet_lora, tiny_model_dir):
    fused = _unet_call(load_pipeline(unet_lora / "model").unet)
    untrained = load_pipeline(tiny_model_dir)
    assert not torch.allclose(_unet_call(untrained.unet), fused, atol=1e-4)  # the LoRA changes the model
    # diffusers' model-level loader (PeftAdapterMixin) with the file's adapter config
    direct = load_pipeline(tiny_model_dir).unet
    state, metadata = _lora_keys(unet_lora / "lora")
    direct.load_lora_adapter(state, prefix="unet", metadata=metadata)
    torch.testing.assert_close(_unet_call(direct), fused, atol=1e-5, rtol=1e-5)


def test_unet_lora_folder_loads_through_the_pipeline(unet_lora, tiny_model_dir):
    """As a user loads it: `pipe.load_lora_weights(<output_dir>/lora)` on the untrained model folder."""
    fused = _unet_call(load_pipeline(unet_lora / "model").unet)
    untrained = load_pipeline(tiny_model_dir)
    untrained.load_lora_weights(str(unet_lora / "lora"))
    torch.testing.assert_close(_unet_call(untrained.unet), fused, atol=1e-5, rtol=1e-5)


def test_unet_lora_resume_equals_uninterrupted(unet_lora, tiny_model_dir, data, tmp_path):
    _unet_run(tiny_model_dir, data, tmp_path, max_train_steps=2)  # stopped after checkpoint-2
    _unet_run(tiny_model_dir, data, tmp_path)  # resume_from_checkpoint: latest (the tiny recipe's)
    for relative in ("model/unet/diffusion_pytorch_model.safetensors", "lora/pytorch_lora_weights.safetensors"):
        again, straight = load_file(tmp_path / relative), load_file(unet_lora / relative)
        assert again.keys() == straight.keys()
        assert all(torch.equal(again[k], straight[k]) for k in straight), relative


def test_seada_stage1_refuses_lora(tmp_path):
    from colordiff.training.seada import TrainSeAdaConfig

    with pytest.raises(ConfigError, match="lora_rank must be 0 in stage 1"):
        load_config(TrainSeAdaConfig, [TINY / "seada_stage1.yaml", TINY / "seada_lora.yaml"])


@pytest.fixture(scope="module")
def seada_lora(tmp_path_factory, data) -> tuple[Path, Path]:
    """Stage II with a LoRA, from an untrained tiny SeAda folder: (that folder, the run's output_dir)."""
    from colordiff.cli import main as cli
    from colordiff.training.seada import TrainSeAdaConfig

    root = tmp_path_factory.mktemp("seada_lora")
    assert cli(["init-model", str(root / "init"), "--tiny", "--method", "seada"]) == 0
    _run(TrainSeAdaConfig, [TINY / "seada_stage2.yaml", TINY / "seada_lora.yaml"],
         pretrained_model_name_or_path=root / "init", output_dir=root / "stage2", train_data_dir=data,
         caption_file=data / "captions.jsonl", train_batch_size=2)
    return root / "init", root / "stage2"


def _control_call(pipe) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    z_t, text = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 77, pipe.unet.config.cross_attention_dim,
                                                                    generator=g)
    control_image = torch.rand(1, 3, 64, 64, generator=g)
    with torch.no_grad():
        return pipe.control(pipe.unet, z_t, torch.tensor([500]), text, control_image).sample


def test_seada_control_lora_trains_its_parts(seada_lora):
    init, out = seada_lora
    base, trained = load_pipeline(init), load_pipeline(out / "model")
    for part in ("unet", "vae", "adapter"):  # stage II trains the control model only
        theirs = getattr(trained, part).state_dict()
        assert all(torch.equal(theirs[k], v) for k, v in getattr(base, part).state_dict().items()), part
    before, after = base.control.state_dict(), trained.control.state_dict()
    assert after.keys() == before.keys()
    changed = {k for k in before if not torch.equal(after[k], before[k])}
    full = ("mapper.", "controlnet.conv_in.", "controlnet.controlnet_down_blocks.", "controlnet.controlnet_mid_block.",
            "rca.")
    projections = (".to_q.weight", ".to_k.weight", ".to_v.weight", ".to_out.0.weight")
    assert all(k.startswith(full) or (k.startswith("controlnet.") and k.endswith(projections)) for k in changed)
    assert any(k.startswith("rca.") for k in changed) and any(k.startswith("mapper.") for k in changed)
    assert any(k.startswith("controlnet.down_blocks.") and k.endswith(projections) for k in changed)
    state, metadata = _lora_keys(out / "lora")
    assert all(k.startswith("control.") for k in state) and "rca.0" in metadata["control.modules_to_save"]
    assert not any(".rca." in k and "lora_" in k for k in state)  # RCA trains in full, without a LoRA
    # the control model's loader (PeftAdapterMixin) on the untrained folder gives the fused model
    fused = _control_call(trained)
    assert not torch.allclose(_control_call(base), fused, atol=1e-4)
    base.control.load_lora_adapter(state, prefix="control", metadata=metadata)
    torch.testing.assert_close(_control_call(base), fused, atol=1e-5, rtol=1e-5)


def test_seada_lora_folder_loads_through_the_pipeline(seada_lora):
    init, out = seada_lora
    base = load_pipeline(init)
    base.load_lora_weights(str(out / "lora"))
    torch.testing.assert_close(_control_call(base), _control_call(load_pipeline(out / "model")), atol=1e-5,
                               rtol=1e-5)
