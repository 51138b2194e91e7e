"""`colordiff colorize` / `init-model` end to end with a tiny model: outputs, errors, resume, determinism."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from colordiff.cli import main
from colordiff.color import rgb_to_lab

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "photos"
FAST = ["--steps", "2", "--resolution", "64"]


def _save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)  # uint16 (H, W) -> mode I;16
    return path


def _L(path: Path) -> np.ndarray:
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255
    return rgb_to_lab(torch.from_numpy(rgb).permute(2, 0, 1))[0].numpy()


@pytest.fixture
def photos(tmp_path) -> Path:
    """Good images in several formats, modes and subfolders, plus bad files and a non-image sidecar."""
    rng = np.random.default_rng(0)
    root = tmp_path / "photos"
    _save(root / "a.png", (rng.random((48, 64, 3)) * 255).astype(np.uint8))
    _save(root / "sub" / "b.jpg", (rng.random((64, 40, 3)) * 255).astype(np.uint8))
    rgba = (rng.random((40, 40, 4)) * 255).astype(np.uint8)
    _save(root / "sub" / "c_alpha.png", rgba)
    _save(root / "d16.png", (rng.random((32, 48)) * 65535).astype(np.uint16))
    shutil.copy(EXAMPLES / "kodim23.jpg", root / "kodim23.jpg")
    (root / "notes.txt").write_text("not an image, and not named like one: ignored")
    bad = root / "bad"
    bad.mkdir()
    (bad / "text.jpg").write_text("this is not a JPEG")
    (bad / "empty.png").write_bytes(b"")
    valid = (root / "a.png").read_bytes()
    (bad / "truncated.png").write_bytes(valid[: len(valid) // 2])
    _save(bad / "tiny.png", np.zeros((4, 4, 3), np.uint8))
    return root


GOOD = {"a.png": (48, 64), "sub/b.jpg": (64, 40), "sub/c_alpha.png": (40, 40), "d16.png": (32, 48),
        "kodim23.jpg": (256, 384)}


def test_colorize_folder_end_to_end(photos, tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "out"
    code = main(["colorize", str(photos), "-o", str(out), "--model", str(tiny_model_dir), "--batch-size", "3", *FAST])
    err = capsys.readouterr().err
    assert code == 1  # some files failed
    for name, (h, w) in GOOD.items():
        result = Image.open(out / name)
        assert result.size == (w, h), name
    assert Image.open(out / "sub" / "c_alpha.png").mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(Image.open(out / "sub" / "c_alpha.png"))[..., 3],
                                  np.asarray(Image.open(photos / "sub" / "c_alpha.png"))[..., 3])
    for name in ("a.png", "sub/c_alpha.png"):  # lossless outputs keep the input's L up to 8-bit rounding
        assert np.abs(_L(out / name) - _L(photos / name)).max() < 1.0, name
    assert np.abs(_L(out / "kodim23.jpg") - _L(photos / "kodim23.jpg")).mean() < 1.5
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == sorted(GOOD)
    lines = err.splitlines()
    for name, reason in [("text.jpg", "not a recognised image format"), ("empty.png", "empty"),
                         ("truncated.png", "truncated"), ("tiny.png", "smaller than the minimum side of 8")]:
        matching = [line for line in lines if name in line]
        assert len(matching) == 1 and reason in matching[0], (name, matching)
    assert "colordiff: 5 colorized, 0 skipped (already done), 4 failed" in err

    # re-run: finished outputs are skipped, bad files still fail
    assert main(["colorize", str(photos), "-o", str(out), "--model", str(tiny_model_dir), *FAST]) == 1
    assert "0 colorized, 5 skipped (already done), 4 failed" in capsys.readouterr().err

    # without the bad files every file succeeds: exit 0
    shutil.rmtree(photos / "bad")
    assert main(["colorize", str(photos), "-o", str(out), "--model", str(tiny_model_dir), *FAST]) == 0
    assert "0 colorized, 5 skipped (already done), 0 failed" in capsys.readouterr().err


def test_outputs_independent_of_batch_size_and_resume_completes(photos, tmp_path, tiny_model_dir, capsys):
    shutil.rmtree(photos / "bad")
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    run = lambda out, batch: main(["colorize", str(photos), "-o", str(out), "--model", str(tiny_model_dir),  # noqa: E731
                                   "--batch-size", batch, "--seed", "3", *FAST])
    assert run(whole, "4") == 0
    assert run(resumed, "1") == 0
    for name in ("a.png", "sub/b.jpg"):  # as if the run had been killed before these two
        (resumed / name).unlink()
    capsys.readouterr()
    assert run(resumed, "2") == 0
    assert "2 colorized, 3 skipped (already done), 0 failed" in capsys.readouterr().err
    for name in GOOD:
        a = np.asarray(Image.open(whole / name), dtype=np.int16)
        b = np.asarray(Image.open(resumed / name), dtype=np.int16)
        if Path(name).suffix == ".png":
            assert np.abs(a - b).max() <= 1, name  # equal up to a rounding flip of the batched matmuls
        else:  # JPEG re-quantizes: one flipped level before encoding moves a few pixels by a few levels
            assert np.abs(a - b).max() <= 4 and (a != b).mean() < 0.01, name


def test_num_samples_seed_and_overwrite(tmp_path, tiny_model_dir, capsys):
    src = EXAMPLES / "darknet_dog.jpg"
    out = tmp_path / "out"
    args = ["colorize", str(src), "-o", str(out), "--model", str(tiny_model_dir), "--num-samples", "2", *FAST]
    assert main(args) == 0
    first = [np.asarray(Image.open(out / f"darknet_dog_{k}.jpg"), dtype=np.int16) for k in range(2)]
    assert np.abs(first[0] - first[1]).mean() > 0.5  # two different samples
    assert main([*args, "--seed", "1", "--overwrite"]) == 0
    assert "1 colorized, 0 skipped" in capsys.readouterr().err
    again = np.asarray(Image.open(out / "darknet_dog_0.jpg"), dtype=np.int16)
    assert np.abs(again - first[0]).mean() > 0.5  # another seed, another result


def test_a_file_that_fails_fails_alone_and_the_rest_continues(photos, tmp_path, tiny_model_dir, capsys,
                                                               monkeypatch):
    """Per-file isolation: a batch that fails is retried file by file, so only the file that causes it fails."""
    from colordiff.colorize_common import sample_seed
    from colordiff.pipelines import ColorDiffPipeline

    shutil.rmtree(photos / "bad")
    poisoned = sample_seed(0, Path("sub/b.jpg"), 0)
    calls = {"n": 0}
    original = ColorDiffPipeline.__call__

    def fails_on_one_file(self, images, *args, generator, **kwargs):
        calls["n"] += 1
        if any(g.initial_seed() == poisoned for g in generator):
            raise RuntimeError("CUDA out of memory (simulated)")
        return original(self, images, *args, generator=generator, **kwargs)

    monkeypatch.setattr(ColorDiffPipeline, "__call__", fails_on_one_file)
    out = tmp_path / "out"
    assert main(["colorize", str(photos), "-o", str(out), "--model", str(tiny_model_dir), "--batch-size", "2",
                 *FAST]) == 1
    err = capsys.readouterr().err
    assert err.count("colorization failed: RuntimeError: CUDA out of memory (simulated)") == 1
    assert "sub/b.jpg: colorization failed" in err
    assert "4 colorized, 0 skipped (already done), 1 failed" in err
    assert calls["n"] == 3 + 2  # three batches of two, two and one; the failing batch again file by file
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.*")) == [
        "a.png", "d16.png", "kodim23.jpg", "sub/c_alpha.png"]
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no temp or claim files left


def test_config_file_and_overrides(tmp_path, tiny_model_dir, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {tiny_model_dir}\nsteps: 2\nresolution: 64\nnum_samples: 3\n")
    out = tmp_path / "out"
    assert main(["colorize", str(EXAMPLES / "kodim05.jpg"), "-o", str(out), "--config", str(config),
                 "num_samples=2"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["kodim05_0.jpg", "kodim05_1.jpg"]


@pytest.mark.parametrize("argv, message", [
    (["colorize", "missing.png", "-o", "x", "--model", "m"], "input not found: missing.png"),
    (["colorize", str(EXAMPLES), "-o", "x"], "model is required"),
    (["colorize", str(EXAMPLES), "-o", "x", "--model", "m", "stepz=3"], "Key 'stepz' not in 'ColorizeConfig'"),
    (["colorize", str(EXAMPLES), "-o", "x", "--model", "m", "--config", "nope.yaml"],
     "nope.yaml: config file not found"),
])
def test_usage_errors_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("colordiff: error:") and message in err and len(err.splitlines()) == 1


def test_missing_model_is_a_usage_error(tmp_path, capsys):
    code = main(["colorize", str(EXAMPLES / "kodim05.jpg"), "-o", str(tmp_path / "o"), "--model",
                 str(tmp_path / "no_such_model"), "--local-files-only"])
    assert code == 2
    assert "cannot load model" in capsys.readouterr().err


def test_init_model_tiny_and_from_sd_folder(tmp_path, capsys):
    from colordiff.pipelines import load_pipeline
    from colordiff.testing import save_tiny_stable_diffusion, tiny_stable_diffusion

    tiny = tmp_path / "tiny"
    assert main(["init-model", str(tiny), "--tiny"]) == 0
    assert main(["init-model", str(tiny), "--tiny"]) == 2  # exists: refuses without --overwrite
    assert "pass --overwrite" in capsys.readouterr().err
    assert (tiny / "model_index.json").is_file() and list(tiny.rglob("*.safetensors"))
    assert not list(tiny.rglob("*.bin")) and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

    base = save_tiny_stable_diffusion(tmp_path / "sd15", seed=7)
    built = tmp_path / "from_sd"
    assert main(["init-model", str(built), "--base", str(base), "--local-files-only"]) == 0
    pipe = load_pipeline(built)
    sd_unet = tiny_stable_diffusion(seed=7).unet.state_dict()
    assert all(torch.equal(pipe.unet.state_dict()[k], v) for k, v in sd_unet.items())
    assert torch.equal(pipe.vae.luminance_alphas, torch.zeros(3))

    assert main(["init-model", str(tmp_path / "x"), "--base", str(tmp_path / "nowhere"), "--local-files-only"]) == 2
    assert "cannot load Stable Diffusion weights" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["colordiff", "seada"])
def test_init_model_from_a_v_prediction_base_predicts_v_and_samples(tmp_path, method):
    """A base whose scheduler predicts v (SD 2.x-v, the miniature's v-prediction base): the untrained model records
    v_prediction, so its own scheduler loads with it and it samples."""
    import json

    from colordiff.pipelines import load_pipeline
    from colordiff.testing import save_tiny_stable_diffusion

    base = save_tiny_stable_diffusion(tmp_path / "sd_v", seed=7)
    scheduler = base / "scheduler" / "scheduler_config.json"
    scheduler.write_text(json.dumps({**json.loads(scheduler.read_text()), "prediction_type": "v_prediction"}))
    built = tmp_path / method
    assert main(["init-model", str(built), "--base", str(base), "--local-files-only", "--method", method]) == 0
    pipe = load_pipeline(built)
    assert pipe.denoiser_model.config.prediction_type == "v_prediction"
    image = pipe([np.zeros((32, 32, 3), np.float32)], num_inference_steps=1, resolution=32, output_type="np",
                 priors="none").images[0]
    assert image.shape == (32, 32, 3) and np.isfinite(image).all()


@pytest.mark.parametrize("method", ["colordiff", "seada"])
def test_init_model_samples_from_the_last_training_step_at_any_step_count(tmp_path, method):
    """SD1.5's scheduler spaces sampling steps "leading": one step would run the network at t = 1 on pure noise, which
    it reads as an almost clean latent, and the output would be that noise. The model init-model writes starts at
    t = 999 (colordiff.schedulers.SAMPLING_SPACING), the step where training saw the most noise."""
    import json

    from colordiff.pipelines import load_pipeline
    from colordiff.testing import save_tiny_stable_diffusion

    base = save_tiny_stable_diffusion(tmp_path / "sd15", seed=7)
    assert json.loads((base / "scheduler" / "scheduler_config.json").read_text())["timestep_spacing"] == "leading"
    built = tmp_path / method
    assert main(["init-model", str(built), "--base", str(base), "--local-files-only", "--method", method]) == 0
    pipe = load_pipeline(built)
    seen = []
    pipe.unet.register_forward_pre_hook(lambda module, args, kwargs: seen.append(int(
        (args[1] if len(args) > 1 else kwargs["timestep"]).flatten()[0])), with_kwargs=True)
    for steps in (1, 3):
        seen.clear()
        pipe([np.zeros((32, 32, 3), np.float32)], num_inference_steps=steps, resolution=32, output_type="np",
             priors="none", guidance_scale=1.0)
        assert seen[0] == 999 and len(set(seen)) == steps


@pytest.mark.slow
def test_accelerate_launch_splits_files_across_processes(tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # --multi_gpu is accelerate's torchrun launcher; on a machine without GPUs the processes run on the CPU (gloo)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "colordiff.cli", "colorize", str(EXAMPLES), "-o", str(out), "--model", str(tiny_model_dir), *FAST]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 colorized, 0 skipped (already done), 0 failed [process 1/2]" in result.stderr
    assert "2 colorized, 0 skipped (already done), 0 failed [process 2/2]" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in EXAMPLES.glob("*.jpg"))


def test_every_flag_has_a_help_line_with_its_default(capsys):
    """`--help` of every subcommand: each option says what it does and, unless required, its default."""
    from colordiff.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for name, sub in commands.items():
        for action in sub._actions:
            if action.dest == "help" or not action.option_strings:
                continue
            text = action.help or ""
            assert text, f"{name} {action.option_strings[0]} has no help line"
            assert "default" in text or "required" in text or "repeatable" in text, \
                f"{name} {action.option_strings[0]}: no default in {text!r}"
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"colordiff {__import__('colordiff').__version__}"


def test_console_script_ends_the_process_group(monkeypatch, capsys):
    """The installed `colordiff` script runs `main` through `end_process_group`, as `python -m colordiff.cli` does."""
    import tomllib

    import colordiff.cli as cli

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    scripts = tomllib.loads(pyproject.read_text())["project"]["scripts"]
    assert scripts["colordiff"] == "colordiff.cli:entry"
    ended = []
    monkeypatch.setattr(cli, "end_process_group", lambda status: ended.append(status) or status)
    monkeypatch.setattr(sys, "argv", ["colordiff", "--version"])
    assert cli.entry() == 0
    assert ended == [0]
    monkeypatch.setattr(sys, "argv", ["colordiff", "colorize"])  # no inputs: a usage error, its status passed on
    status = cli.entry()
    assert status != 0 and ended == [0, status]
    capsys.readouterr()
