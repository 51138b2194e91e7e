"""ColorDiff training (paper 000, Eq.2 and Eq.7) with tiny models: the real scripts through `accelerate launch`,
exact resume, checkpoint rotation, 2 processes, frozen parts, NaN stop, bad data."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from colordiff.pipelines import load_pipeline

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def train_data(tmp_path_factory) -> Path:
    """Six colorful generated images, one grayscale image (dropped) and one truncated file (skipped)."""
    root = tmp_path_factory.mktemp("data")
    yy, xx = np.mgrid[0:80, 0:96] / 80
    for i in range(6):
        rgb = np.stack([np.sin(xx * 3 + i), np.cos(yy * 2 + i), xx * yy], -1) * 0.5 + 0.5
        Image.fromarray((rgb * 255).astype(np.uint8)).save(root / f"img{i}.png")
    Image.fromarray((xx * 255).astype(np.uint8)).convert("RGB").save(root / "gray.png")
    valid = (root / "img0.png").read_bytes()
    (root / "broken.png").write_bytes(valid[: len(valid) // 3])
    return root


def _launch(script: str, recipe: str, overrides: list[str], processes: int = 1) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--num_processes", str(processes)]
    if processes > 1:
        cmd.append("--multi_gpu")  # torchrun; on a machine without GPUs the processes run on the CPU (gloo)
    cmd += [str(REPO / "scripts" / script), "--config", str(REPO / "configs" / "tiny" / recipe), *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def _unet_weights(model: Path) -> dict:
    return load_file(model / "unet" / "diffusion_pytorch_model.safetensors")


def _losses(output: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (output / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, tiny_model_dir, train_data):
    """Six U-Net steps in one go, checkpointing every 2, keeping 2."""
    out = tmp_path_factory.mktemp("straight")
    result = _launch("train_unet.py", "unet.yaml", [f"pretrained_model_name_or_path={tiny_model_dir}",
                                                    f"output_dir={out}", f"train_data_dir={train_data}"])
    return out, result


def test_unet_run_checkpoints_rotate_and_model_colorizes(straight_run, tiny_model_dir, tmp_path):
    out, result = straight_run
    assert "8 listed, 6 kept, 1 dropped as already grayscale" in result.stdout + result.stderr
    assert "1 unreadable" in result.stdout + result.stderr and "broken.png" in result.stderr
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint-4", "checkpoint-6"]
    assert (out / "validation" / "step-0000006.png").is_file()
    assert len(_losses(out)) == 6

    trained, base = load_pipeline(out / "model"), load_pipeline(tiny_model_dir)
    for name in ("vae", "text_encoder"):  # frozen parts: bit-identical
        for key, value in getattr(base, name).state_dict().items():
            assert torch.equal(getattr(trained, name).state_dict()[key], value), (name, key)
    changed = [k for k, v in base.unet.state_dict().items() if not torch.equal(trained.unet.state_dict()[k], v)]
    assert "condition_fuse.weight" in changed and len(changed) > 10

    from colordiff.cli import main

    assert main(["colorize", str(REPO / "examples" / "photos" / "kodim05.jpg"), "-o", str(tmp_path), "--model",
                 str(out / "model"), "--steps", "2", "--resolution", "64"]) == 0
    assert (tmp_path / "kodim05.jpg").is_file()


def test_unet_resume_equals_uninterrupted(straight_run, tmp_path, tiny_model_dir, train_data):
    straight, _ = straight_run
    common = [f"pretrained_model_name_or_path={tiny_model_dir}", f"output_dir={tmp_path}",
              f"train_data_dir={train_data}", "validation_images=[]"]
    _launch("train_unet.py", "unet.yaml", [*common, "max_train_steps=4"])  # "killed" after step 4
    assert (tmp_path / "checkpoint-4").is_dir()
    _launch("train_unet.py", "unet.yaml", [*common, "max_train_steps=6"])  # resume_from_checkpoint: latest
    resumed, uninterrupted = _unet_weights(tmp_path / "model"), _unet_weights(straight / "model")
    assert resumed.keys() == uninterrupted.keys()
    for key in uninterrupted:
        assert torch.equal(resumed[key], uninterrupted[key]), key
    assert _losses(tmp_path) == _losses(straight)  # steps 1-4, then 5-6 after the resume


def test_two_processes_see_different_data(tmp_path, tiny_model_dir, train_data):
    _launch("train_unet.py", "unet.yaml", [f"pretrained_model_name_or_path={tiny_model_dir}", f"output_dir={tmp_path}",
                                           f"train_data_dir={train_data}", "max_train_steps=2", "train_batch_size=1",
                                           "validation_images=[]", "log_sample_indices=true"], processes=2)
    seen = []
    for rank in (0, 1):
        records = [json.loads(x) for x in (tmp_path / f"sample_indices.rank{rank}.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records] == [1, 2]
        seen.append({i for r in records for i in r["index"]})
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    assert (tmp_path / "model" / "model_index.json").is_file()


def test_decoder_trains_only_decoder_side_resumes_exactly_and_merges(tmp_path, tiny_model_dir, train_data,
                                                                   straight_run, capsys):
    common = [f"pretrained_model_name_or_path={tiny_model_dir}", f"train_data_dir={train_data}"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    _launch("train_decoder.py", "decoder.yaml", [*common, f"output_dir={straight}"])
    _launch("train_decoder.py", "decoder.yaml", [*common, f"output_dir={resumed}", "max_train_steps=4",
                                                 "validation_images=[]"])
    _launch("train_decoder.py", "decoder.yaml", [*common, f"output_dir={resumed}", "validation_images=[]"])
    trained, base = load_pipeline(straight / "model"), load_pipeline(tiny_model_dir)
    after, before = trained.vae.state_dict(), base.vae.state_dict()
    frozen = [k for k in before if k.startswith(("encoder.", "quant_conv."))]
    assert frozen and all(torch.equal(after[k], before[k]) for k in frozen)
    assert not torch.equal(after["decoder.conv_out.weight"], before["decoder.conv_out.weight"])
    assert (after["luminance_alphas"] != 0).all()  # Eq.6 skips switched on by training
    assert all(torch.equal(trained.unet.state_dict()[k], v) for k, v in base.unet.state_dict().items())
    again = load_file(resumed / "model" / "vae" / "diffusion_pytorch_model.safetensors")
    for key, value in load_file(straight / "model" / "vae" / "diffusion_pytorch_model.safetensors").items():
        assert torch.equal(again[key], value), key

    from colordiff.cli import main

    unet_model = straight_run[0] / "model"
    assert main(["merge-decoder", str(unet_model), str(straight / "model"), "-o", str(tmp_path / "merged")]) == 0
    merged = load_pipeline(tmp_path / "merged")
    assert all(torch.equal(merged.vae.state_dict()[k], v) for k, v in after.items())
    unet_weights = load_pipeline(unet_model).unet.state_dict()
    assert all(torch.equal(merged.unet.state_dict()[k], v) for k, v in unet_weights.items())
    assert main(["init-model", str(tmp_path / "other"), "--tiny", "--seed", "1"]) == 0
    capsys.readouterr()
    assert main(["merge-decoder", str(unet_model), str(tmp_path / "other"), "-o", str(tmp_path / "bad")]) == 2
    assert "its VAE encoder differs" in capsys.readouterr().err and not (tmp_path / "bad").exists()


# -- in-process runs (the same main() the scripts call) -------------------------------------------------------------
def _config(tiny_model_dir, data, out, **overrides):
    from colordiff.training.unet import TrainUNetConfig

    settings = {"pretrained_model_name_or_path": str(tiny_model_dir), "output_dir": str(out),
                "train_data_dir": str(data), "text_source": "empty", "resolution": 64, "train_batch_size": 4,
                "mixed_precision": "no", "checkpointing_steps": 2, "validation_images": [], "report_to": "none"}
    return TrainUNetConfig(**{**settings, **overrides})


def test_loss_falls_when_overfitting_four_images(tmp_path, tiny_model_dir, fresh_accelerate):
    from colordiff.training.unet import main

    data = tmp_path / "four"
    data.mkdir()
    yy, xx = np.mgrid[0:64, 0:64] / 64
    for i in range(4):
        rgb = np.stack([np.sin(xx * 3 + i), np.cos(yy * 2 + i), xx * yy], -1) * 0.5 + 0.5
        Image.fromarray((rgb * 255).astype(np.uint8)).save(data / f"{i}.png")
    main(_config(tiny_model_dir, data, tmp_path / "out", max_train_steps=40, learning_rate=1e-3,
                 random_flip=False, checkpointing_steps=1000))
    losses = _losses(tmp_path / "out")
    assert len(losses) == 40
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5])


def test_nan_loss_stops_before_the_update_and_keeps_last_good_checkpoint(tmp_path, tiny_model_dir, train_data,
                                                                         monkeypatch, fresh_accelerate):
    from colordiff.training.loop import TrainingDiverged
    from colordiff.training.unet import UNetTask, main

    calls = {"n": 0}
    original = UNetTask.loss

    def exploding(self, modules, batch):
        calls["n"] += 1
        loss = original(self, modules, batch)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(UNetTask, "loss", exploding)
    out = tmp_path / "out"
    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 3: .*checkpoint-2"):
        main(_config(tiny_model_dir, train_data, out, max_train_steps=6))
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint-2"]
    assert not (out / "model").exists()
    weights = load_file(out / "checkpoint-2" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_precomputed_latents_train_exactly_like_images(tmp_path, tiny_model_dir, train_data, fresh_accelerate):
    from colordiff.training.precompute import main as precompute
    from colordiff.training.unet import main

    settings = {"center_crop": True, "random_flip": False, "max_train_steps": 4, "train_batch_size": 2}
    cache = tmp_path / "cache"
    precompute(_config(tiny_model_dir, train_data, tmp_path / "pre", latents_cache=str(cache), latents_dtype="float32",
                       latents_shard_size=4, **settings))
    index = json.loads((cache / "index.json").read_text())
    assert index["rows"] == 6 and index["shards"] == ["shard-000000.safetensors", "shard-000001.safetensors"]
    main(_config(tiny_model_dir, train_data, tmp_path / "images", **settings))
    main(_config(tiny_model_dir, train_data, tmp_path / "latents", latents_cache=str(cache), **settings))
    assert _losses(tmp_path / "latents") == _losses(tmp_path / "images")
    a, b = _unet_weights(tmp_path / "latents" / "model"), _unet_weights(tmp_path / "images" / "model")
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="cached at 64 px, training at 128"):
        main(_config(tiny_model_dir, train_data, tmp_path / "x", latents_cache=str(cache), resolution=128))


def test_ema_is_checkpointed_and_exported(tmp_path, tiny_model_dir, train_data, fresh_accelerate):
    from colordiff.training.unet import main

    main(_config(tiny_model_dir, train_data, tmp_path / "out", max_train_steps=4, use_ema=True, ema_decay=0.5,
                 train_batch_size=2))
    checkpoint = tmp_path / "out" / "checkpoint-4"
    shadow = load_file(checkpoint / "ema.safetensors")
    live = load_file(checkpoint / "model.safetensors")
    exported = _unet_weights(tmp_path / "out" / "model")
    # the exported model holds the averages, which differ from the live weights after 4 updates
    assert set(shadow) == {f"unet.{k}" for k in exported}
    assert torch.equal(exported["condition_fuse.weight"], shadow["unet.condition_fuse.weight"])
    assert not torch.equal(exported["condition_fuse.weight"], live["condition_fuse.weight"])
    resumed = tmp_path / "resumed"
    for steps in (2, 4):  # the second run resumes from checkpoint-2, EMA state included
        main(_config(tiny_model_dir, train_data, resumed, max_train_steps=steps, use_ema=True, ema_decay=0.5,
                     train_batch_size=2, resume_from_checkpoint="latest"))
    again = _unet_weights(resumed / "model")
    assert all(torch.equal(again[k], exported[k]) for k in exported)
