"""Training under faults, with tiny models: a stop while a checkpoint is written, resumes (the line they print, the
train log they keep), stale staging folders, a training set with no usable image, file modes of what training
writes."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


class Killed(Exception):
    """Stands in for the process being killed."""


@pytest.fixture(scope="module")
def four_images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("four")
    yy, xx = np.mgrid[0:64, 0:64] / 64
    for i in range(4):
        rgb = np.stack([np.sin(xx * 3 + i), np.cos(yy * 2 + i), xx * yy], -1) * 0.5 + 0.5
        Image.fromarray((rgb * 255).astype(np.uint8)).save(root / f"{i}.png")
    return root


def _config(tiny_model_dir, data, out, **overrides):
    """Four images, batch 4: one step per epoch."""
    from colordiff.training.unet import TrainUNetConfig

    settings = {"pretrained_model_name_or_path": str(tiny_model_dir), "output_dir": str(out),
                "train_data_dir": str(data), "text_source": "empty", "resolution": 32, "train_batch_size": 4,
                "mixed_precision": "no", "checkpointing_steps": 2, "validation_images": [], "report_to": "none",
                "resume_from_checkpoint": "latest"}
    return TrainUNetConfig(**{**settings, **overrides})


def _checkpoints(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint"))


def _steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()]


def _count_losses(monkeypatch) -> dict:
    from colordiff.training.unet import UNetTask

    calls = {"n": 0}
    original = UNetTask.loss

    def counted(self, modules, batch):
        calls["n"] += 1
        return original(self, modules, batch)

    monkeypatch.setattr(UNetTask, "loss", counted)
    return calls


# -- 1. rotation after the new checkpoint is whole --------------------------------------------------------------------
def test_rotation_keeps_the_limit_of_finished_checkpoints(tmp_path):
    from colordiff.training.checkpoint import rotate_checkpoints

    for step in (1, 2, 3):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "checkpoint-4.tmp").mkdir()  # unfinished: neither counted nor removed here
    assert [p.name for p in rotate_checkpoints(tmp_path, 2, newest=tmp_path / "checkpoint-3")] == ["checkpoint-1"]
    assert _checkpoints(tmp_path) == ["checkpoint-2", "checkpoint-3", "checkpoint-4.tmp"]
    # the checkpoint just published stays even when an older run left a later step behind
    assert [p.name for p in rotate_checkpoints(tmp_path, 1, newest=tmp_path / "checkpoint-2")] == ["checkpoint-3"]
    assert _checkpoints(tmp_path) == ["checkpoint-2", "checkpoint-4.tmp"]


def test_kill_while_writing_a_checkpoint_keeps_the_previous_one_for_resume(tmp_path, tiny_model_dir, four_images,
                                                                          monkeypatch, fresh_accelerate, capsys):
    from accelerate import Accelerator

    from colordiff.training.unet import main

    original = Accelerator.save_state

    def killed_during_step_4(self, output_dir=None, **kwargs):
        original(self, output_dir, **kwargs)  # part of checkpoint-4.tmp is on disk, then the process dies
        if Path(output_dir).name == "checkpoint-4.tmp":
            raise Killed

    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        patch.setattr(Accelerator, "save_state", killed_during_step_4)
        with pytest.raises(Killed):
            main(_config(tiny_model_dir, four_images, out, max_train_steps=4, checkpoints_total_limit=1))
    assert _checkpoints(out) == ["checkpoint-2", "checkpoint-4.tmp"]

    calls = _count_losses(monkeypatch)
    main(_config(tiny_model_dir, four_images, out, max_train_steps=4, checkpoints_total_limit=1))
    assert calls["n"] == 2  # steps 3 and 4 only: resumed from checkpoint-2
    assert _checkpoints(out) == ["checkpoint-4"]
    assert "warning" not in capsys.readouterr().err


def test_latest_without_a_checkpoint_warns_when_the_train_log_has_rows(tmp_path, tiny_model_dir, four_images,
                                                                      fresh_accelerate, capsys):
    from colordiff.training.unet import main

    out = tmp_path / "out"
    out.mkdir()
    (out / "train_log.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0, "lr": 0.1}) + "\n"
                                                 for s in (1, 2, 3)))
    main(_config(tiny_model_dir, four_images, out, max_train_steps=1))
    err = capsys.readouterr().err
    warning = [line for line in err.splitlines() if "warning" in line]
    assert warning == [f"colordiff: warning: {out} has a train log up to step 3 but no finished checkpoint; "
                       "starting at step 0"]
    assert _steps(out) == [1]  # the new run's log replaces the old one's


# -- 2. a training set with no usable image --------------------------------------------------------------------------
def test_empty_training_folder_is_one_line_and_exit_2(tmp_path, tiny_model_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    cmd = [sys.executable, str(REPO / "scripts" / "train_unet.py"), "--config", str(REPO / "configs" / "tiny" /
           "unet.yaml"), f"pretrained_model_name_or_path={tiny_model_dir}", f"output_dir={tmp_path / 'out'}",
           f"train_data_dir={empty}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [f"error: {empty}: no usable image (0 listed, 0 already grayscale, "
                                          "0 unreadable)"]


def test_only_broken_images_is_a_usage_error(tmp_path, tiny_model_dir, four_images, fresh_accelerate, capsys):
    from colordiff.errors import EXIT_USAGE
    from colordiff.training.cli import run_script
    from colordiff.training.unet import TrainUNetConfig, main

    broken = tmp_path / "broken"
    broken.mkdir()
    for i in range(2):
        (broken / f"{i}.png").write_bytes((four_images / f"{i}.png").read_bytes()[:100])
    status = run_script(TrainUNetConfig, main, "train", [f"pretrained_model_name_or_path={tiny_model_dir}",
                                                         f"output_dir={tmp_path / 'out'}", f"train_data_dir={broken}",
                                                         "text_source=empty", "report_to=none"])
    err = capsys.readouterr().err
    assert status == EXIT_USAGE and "Traceback" not in err
    assert err.splitlines()[-1] == f"error: {broken}: no usable image (2 listed, 0 already grayscale, 2 unreadable)"


# -- 3. resume: the line it prints, one log row per step ---------------------------------------------------------------
def test_resume_prints_its_step_and_the_log_keeps_one_row_per_step(tmp_path, tiny_model_dir, four_images,
                                                                    monkeypatch, fresh_accelerate, capsys):
    from colordiff.training.unet import UNetTask, main

    original, calls = UNetTask.loss, {"n": 0}

    def killed_in_step_4(self, modules, batch):
        calls["n"] += 1
        if calls["n"] == 4:
            raise Killed  # steps 1-3 logged, checkpoint-2 the last one written
        return original(self, modules, batch)

    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        patch.setattr(UNetTask, "loss", killed_in_step_4)
        with pytest.raises(Killed):
            main(_config(tiny_model_dir, four_images, out, max_train_steps=6))
    assert _steps(out) == [1, 2, 3] and _checkpoints(out) == ["checkpoint-2"]
    capsys.readouterr()
    main(_config(tiny_model_dir, four_images, out, max_train_steps=6))
    assert "resumed from checkpoint-2 at step 2" in capsys.readouterr().out.splitlines()
    assert _steps(out) == [1, 2, 3, 4, 5, 6]


# -- 4. stale staging folders ------------------------------------------------------------------------------------------
def test_stale_staging_folders_are_removed_at_start_and_nothing_else(tmp_path, tiny_model_dir, four_images,
                                                                     fresh_accelerate):
    from colordiff.training.unet import main

    out = tmp_path / "out"
    stale = [out / "checkpoint-3.tmp", out / "checkpoint-10.tmp"]
    for folder in stale:
        (folder / "unet").mkdir(parents=True)
        (folder / "unet" / "model.safetensors").write_bytes(b"partial")
    kept = [out / "checkpoint-3.tmp.keep", out / "checkpoint-x.tmp", out / "notes.tmp", out / "mycheckpoint-3.tmp"]
    for folder in kept[:2]:
        folder.mkdir()
    for file in kept[2:]:
        file.write_text("mine")
    (out / "checkpoint-7.tmp").write_text("a file, not a staging folder")
    kept.append(out / "checkpoint-7.tmp")
    main(_config(tiny_model_dir, four_images, out, max_train_steps=1))
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in kept)
    assert (out / "checkpoint-1").is_dir()


# -- 5. file modes -----------------------------------------------------------------------------------------------------
@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _locked_out(folder: Path) -> list[str]:
    """Files and folders under folder that group and others cannot read (or enter)."""
    bad = []
    for path in [folder, *folder.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        need = 0o055 if path.is_dir() else 0o044
        if mode & need != need:
            bad.append(f"{path.relative_to(folder)} {oct(mode)}")
    return bad


def test_checkpoints_and_model_folder_are_readable_by_others(tmp_path, tiny_model_dir, four_images, umask_022,
                                                             fresh_accelerate):
    from colordiff.training.unet import main

    out = tmp_path / "out"
    main(_config(tiny_model_dir, four_images, out, max_train_steps=2, use_ema=True))
    checkpoint = out / "checkpoint-2"
    assert (checkpoint / "model.safetensors").is_file() and (checkpoint / "ema.safetensors").is_file()
    assert _locked_out(checkpoint) == []
    assert (out / "model" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert _locked_out(out / "model") == []


def test_latent_cache_is_readable_by_others(tmp_path, tiny_model_dir, four_images, umask_022, fresh_accelerate):
    from colordiff.training.precompute import main as precompute

    cache = tmp_path / "cache"
    precompute(_config(tiny_model_dir, four_images, tmp_path / "pre", latents_cache=str(cache), center_crop=True,
                       latents_shard_size=2))
    assert len(list(cache.glob("shard-*.safetensors"))) == 2
    assert _locked_out(cache) == []
