"""Bad settings and broken model folders fail in one line, with exit status 2, before any work starts: YAML syntax
errors name the file, line and column; numbers out of range name the key; a corrupt component names its file."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from colordiff.cli import main
from colordiff.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "gray.png"
    Image.fromarray((np.random.default_rng(0).random((40, 48)) * 255).astype(np.uint8)).save(path)
    return path


def _one_error_line(capfd) -> str:
    """The whole of stderr (file descriptor 2: library loggers and progress bars included): one error line."""
    err = capfd.readouterr().err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("colordiff: error: "), err
    return lines[0]


# -- YAML that does not parse -------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, where", [
    ("steps: [1, 2\n", "line 2, column 1"),  # an unclosed flow list: found at the end of the file
    ("steps: 2\n\tresolution: 64\n", "line 2, column 1"),  # a tab where an indentation is
    ("model: m\n  steps: 2\n", "line 2, column 8"),  # a mapping nested under a scalar
    ("steps: 2\nsteps: 3\n", "line 2, column 1"),  # a key given twice
])
def test_invalid_yaml_is_one_line_with_file_line_and_column(text, where, tmp_path, image, capfd, monkeypatch):
    import colordiff.colorize

    monkeypatch.setattr(colordiff.colorize, "load_model", _must_not_load)
    bad = tmp_path / "run.yaml"
    bad.write_text(text)
    assert main(["colorize", str(image), "-o", str(tmp_path / "out"), "--model", "m", "--config", str(bad)]) == 2
    line = _one_error_line(capfd)
    assert f"{bad}: invalid YAML at {where}" in line, line


def test_invalid_yaml_in_a_default_names_that_file(tmp_path):
    (tmp_path / "base.yaml").write_text("steps: 2\nresolution: [64\n")
    (tmp_path / "run.yaml").write_text("defaults: [base.yaml]\nsteps: 3\n")
    from colordiff.colorize import ColorizeConfig

    with pytest.raises(ConfigError, match=r"base\.yaml: invalid YAML at line 3, column 1: did not find expected"):
        load_config(ColorizeConfig, [tmp_path / "run.yaml"])
    (tmp_path / "binary.yaml").write_bytes(b"steps: \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"binary\.yaml: not a UTF-8 text file"):
        load_config(ColorizeConfig, [tmp_path / "binary.yaml"])


# -- numbers out of range: colorize -------------------------------------------------------------------------------
def _must_not_load(*args, **kwargs):
    raise AssertionError("the model was loaded although the settings are invalid")


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "steps must be >= 1, got 0"),
    (["steps=-3"], "steps must be >= 1, got -3"),
    (["--num-samples", "0"], "num_samples must be >= 1, got 0"),
    (["--batch-size", "0"], "batch_size must be >= 1, got 0"),
    (["--resolution", "0"], "resolution must be a positive multiple of 8, got 0"),
    (["--resolution", "-64"], "resolution must be a positive multiple of 8, got -64"),
    (["--resolution", "7"], "resolution must be a positive multiple of 8, got 7"),
    (["resolution=100"], "resolution must be a positive multiple of 8, got 100"),
    (["--guidance-scale", "nan"], "guidance_scale must be a finite number, got nan"),
    (["--guidance-scale", "inf"], "guidance_scale must be a finite number, got inf"),
    (["guidance_scale=-inf", "--prompt", "a photo"], "guidance_scale must be a finite number, got -inf"),
    (["--guidance-scale", "-1"], "guidance_scale must be >= 0, got -1.0"),
    (["--seg-strength", "1.5"], "seg_strength must be in [0, 1], got 1.5"),
    (["--seg-strength", "-0.1"], "seg_strength must be in [0, 1], got -0.1"),
    (["seg_strength=nan"], "seg_strength must be a finite number, got nan"),
    (["max_pixels=0"], "max_pixels must be >= 1, got 0"),
    (["dtype=float64"], "dtype must be one of auto, float32, float16, bfloat16, got 'float64'"),
])
def test_colorize_rejects_bad_numbers_before_loading_the_model(args, message, tmp_path, image, tiny_model_dir, capfd,
                                                               monkeypatch):
    import colordiff.colorize

    monkeypatch.setattr(colordiff.colorize, "load_model", _must_not_load)
    out = tmp_path / "out"
    assert main(["colorize", str(image), "-o", str(out), "--model", str(tiny_model_dir), *args]) == 2
    assert _one_error_line(capfd) == f"colordiff: error: {message}"
    assert not out.exists()


def test_a_bad_number_from_a_file_names_the_file(tmp_path, image, capfd, monkeypatch):
    import colordiff.colorize

    monkeypatch.setattr(colordiff.colorize, "load_model", _must_not_load)
    (tmp_path / "base.yaml").write_text("guidance_scale: .nan\n")
    (tmp_path / "run.yaml").write_text("defaults: [base.yaml]\nsteps: 2\n")
    args = ["colorize", str(image), "-o", str(tmp_path / "out"), "--model", "m", "--config", str(tmp_path / "run.yaml")]
    assert main(args) == 2
    assert _one_error_line(capfd) == \
        f"colordiff: error: {tmp_path / 'base.yaml'}: guidance_scale must be a finite number, got nan"
    from colordiff.colorize import ColorizeConfig  # an override of the key replaces the file's value

    assert load_config(ColorizeConfig, [tmp_path / "run.yaml"], ["model=m", "output_dir=o", "guidance_scale=2"]
                       ).guidance_scale == 2.0


def test_values_at_the_edges_are_accepted():
    from colordiff.colorize import ColorizeConfig

    config = load_config(ColorizeConfig, [], ["model=m", "output_dir=o", "resolution=8", "seg_strength=0",
                                              "guidance_scale=0", "steps=1", "seed=-5"])
    assert (config.resolution, config.seg_strength, config.steps) == (8, 0.0, 1)
    assert load_config(ColorizeConfig, [], ["model=m", "output_dir=o", "seg_strength=1"]).seg_strength == 1.0


# -- numbers out of range: training, evaluation, priors -----------------------------------------------------------
def _schemas():
    from colordiff.training.decoder import TrainDecoderConfig
    from colordiff.training.distill import DistillConfig
    from colordiff.training.seada import TrainSeAdaConfig
    from colordiff.training.unet import TrainUNetConfig

    return {"unet": TrainUNetConfig, "decoder": TrainDecoderConfig, "seada": TrainSeAdaConfig,
            "distill": DistillConfig}


@pytest.mark.parametrize("schema, override, message", [
    ("unet", "learning_rate=0", "learning_rate must be > 0, got 0.0"),
    ("unet", "learning_rate=nan", "learning_rate must be a finite number, got nan"),
    ("unet", "train_batch_size=0", "train_batch_size must be >= 1, got 0"),
    ("unet", "max_train_steps=0", "max_train_steps must be >= 1, got 0"),
    ("unet", "gradient_accumulation_steps=0", "gradient_accumulation_steps must be >= 1, got 0"),
    ("unet", "resolution=12", "resolution must be a positive multiple of 8, got 12"),
    ("unet", "adam_beta1=1.0", "adam_beta1 must be in [0, 1), got 1.0"),
    ("unet", "adam_epsilon=0", "adam_epsilon must be > 0, got 0.0"),
    ("unet", "max_grad_norm=inf", "max_grad_norm must be a finite number, got inf"),
    ("unet", "ema_decay=1.5", "ema_decay must be in [0, 1], got 1.5"),
    ("unet", "checkpointing_steps=0", "checkpointing_steps must be >= 1, got 0"),
    ("unet", "checkpoints_total_limit=0", "checkpoints_total_limit must be >= 1, got 0"),
    ("unet", "validation_steps=0", "validation_steps must be >= 1, got 0"),
    ("unet", "seed=-1", "seed must be in [0, 4294967295], got -1"),
    ("unet", "resize_range=[0.5,1]", "resize_range must be [low, high] with 1 <= low <= high, got [0.5, 1.0]"),
    ("unet", "resize_range=[2,1]", "resize_range must be [low, high] with 1 <= low <= high, got [2.0, 1.0]"),
    ("unet", "resize_range=[1,nan]", "resize_range[1] must be a finite number, got nan"),
    ("unet", "conditioning_dropout=1.5", "conditioning_dropout must be in [0, 1], got 1.5"),
    ("unet", "latents_shard_size=0", "latents_shard_size must be >= 1, got 0"),
    ("decoder", "perceptual_weight=-1", "perceptual_weight must be >= 0, got -1.0"),
    ("seada", "stage=4", "stage must be one of 0, 1, 2, 3, got 4"),
    ("seada", "lambda_r=inf", "lambda_r must be a finite number, got inf"),
    ("seada", "lambda_s=-1", "lambda_s must be >= 0, got -1.0"),
    ("seada", "mapper_channels=0", "mapper_channels must be >= 1, got 0"),
])
def test_training_settings_are_checked(schema, override, message):
    with pytest.raises(ConfigError) as caught:
        load_config(_schemas()[schema], [], [override])
    assert str(caught.value) == message


def test_training_script_stops_before_training(tmp_path, capsys):
    from colordiff.training.cli import run_script
    from colordiff.training.unet import TrainUNetConfig

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("learning_rate: 0.0\n")
    assert run_script(TrainUNetConfig, _must_not_load, "test", ["--config", str(recipe)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {recipe}: learning_rate must be > 0, got 0.0"


@pytest.mark.parametrize("overrides, message", [
    (["batch_size=0"], "batch_size must be >= 1, got 0"),
    (["protocol.size=-1"], "protocol.size must be 0 (native) or a positive size, got -1"),
    (["protocol.crop_border=-2"], "protocol.crop_border must be 0 or more pixels, got -2"),
    (["protocol.size=32", "protocol.crop_border=16"],
     "protocol.crop_border 16 leaves nothing of a 32 px image (it is cut from each border)"),
    (["protocol.crop=middle"], "protocol.crop must be center or stretch, got 'middle'"),
    (["on_size_mismatch=crop"], "on_size_mismatch must be error or resize, got 'crop'"),
])
def test_evaluation_settings_are_checked(overrides, message, tmp_path, capsys):
    from colordiff.evaluate import EvalConfig

    with pytest.raises(ConfigError) as caught:
        load_config(EvalConfig, [], ["pred=p", "gt=g", *overrides])
    assert str(caught.value) == message
    # through the CLI: exit 2 before the folders are even looked at (they do not exist)
    assert main(["evaluate", "--pred", str(tmp_path / "no"), "--gt", str(tmp_path / "no"), *overrides]) == 2
    assert capsys.readouterr().err.strip() == f"colordiff: error: {message}"


def test_eval_set_protocol_is_checked_too(tmp_path):
    from colordiff.reproduce import EvalSetConfig

    (tmp_path / "set.yaml").write_text("name: x\nprepared_dir: p\nprotocol: {size: 32, crop_border: 20}\n"
                                       "evaluation: {batch_size: 0}\n")
    with pytest.raises(ConfigError, match=r"set\.yaml: protocol\.crop_border 20 leaves nothing of a 32 px image"):
        load_config(EvalSetConfig, [tmp_path / "set.yaml"])
    with pytest.raises(ConfigError, match=r"set\.yaml: evaluation\.batch_size must be >= 1, got 0$"):
        load_config(EvalSetConfig, [tmp_path / "set.yaml"], ["protocol.crop_border=0"])


@pytest.mark.parametrize("yaml_text, message", [
    ("segmenter: {score_threshold: 1.5}\n", "segmenter.score_threshold must be in [0, 1], got 1.5"),
    ("segmenter: {min_area: .inf}\n", "segmenter.min_area must be a finite number, got inf"),
    ("segmenter: {max_instances: 0}\n", "segmenter.max_instances must be >= 1, got 0"),
    ("captioner: {num_beams: 0}\n", "captioner.num_beams must be >= 1, got 0"),
    ("classifier: {batch_size: 0}\n", "classifier.batch_size must be >= 1, got 0"),
])
def test_prior_generator_settings_are_checked(yaml_text, message, tmp_path):
    from colordiff.semantics import PriorsConfig

    path = tmp_path / "semantic_priors.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as caught:
        load_config(PriorsConfig, [path])
    assert str(caught.value) == f"{path}: {message}"


def test_every_shipped_config_still_loads():
    """The checks accept every recipe and settings file the repository ships."""
    from colordiff.colorize import ColorizeConfig
    from colordiff.mini.base import MiniBaseConfig
    from colordiff.mini.lab import LabConfig
    from colordiff.reproduce import EvalSetConfig
    from colordiff.semantics import PriorsConfig
    from colordiff.video.config import VideoConfig

    schemas = _schemas()
    loaded = 0
    for path in sorted((REPO / "configs").rglob("*.yaml")):
        relative = path.relative_to(REPO / "configs").as_posix()
        if relative.startswith(("benchmark/", "eval/published/")) or relative == "semantics/captions_seada.yaml":
            continue  # other schemas (scripts/benchmark.py and caption.py, the published tables)
        if relative in ("mini/lab.yaml", "mini/lab_photos.yaml", "mini/world.yaml"):
            load_config(LabConfig, [path], ["data_dir=d"])
        elif relative in ("mini/world_seed1.yaml", "mini/world_vprior.yaml"):  # applied after world.yaml
            load_config(LabConfig, [REPO / "configs/mini/world.yaml", path])
        elif relative == "mini/lab_epsprior.yaml":  # applied after lab.yaml
            load_config(LabConfig, [REPO / "configs/mini/lab.yaml", path])
        elif relative in ("mini/base.yaml", "mini/world_base.yaml"):
            load_config(MiniBaseConfig, [path], ["data_dir=d"])
        elif path.name.endswith("colorize.yaml"):
            load_config(ColorizeConfig, [path], ["model=m", "output_dir=o"])
        elif relative.startswith("video/"):
            load_config(VideoConfig, [path], ["model=m", "output_dir=o"])
        elif relative.startswith("semantics/"):
            load_config(PriorsConfig, [path])
        elif relative.startswith("eval/"):
            load_config(EvalSetConfig, [path], ["prepared_dir=p"])
        elif "distill" in path.name:
            load_config(schemas["distill"], [path])
        elif "stage" in path.name or relative.startswith("seada/"):  # the stages and their ablations
            load_config(schemas["seada"], [path])
        else:
            load_config(schemas["decoder" if "decoder" in path.name else "unet"], [path])
        loaded += 1
    assert loaded >= 30


# -- broken model folders -----------------------------------------------------------------------------------------
def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _break_json(path: Path) -> None:
    path.write_text('{"_class_name": ')


def _drop_tensor(path: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(path)
    del tensors[sorted(tensors)[0]]
    save_file(tensors, path)


def _edit_config(key: str, value):
    def edit(path: Path) -> None:
        config = json.loads(path.read_text())
        config[key] = value
        path.write_text(json.dumps(config))
    return edit


TE, UNET, VAE = "text_encoder/model.safetensors", "unet/diffusion_pytorch_model.safetensors", \
    "vae/diffusion_pytorch_model.safetensors"
BREAKAGES = [
    (TE, _truncate, TE, "truncated or corrupt safetensors file"),
    (UNET, _truncate, UNET, "truncated or corrupt safetensors file"),
    (VAE, _truncate, VAE, "truncated or corrupt safetensors file"),
    (UNET, lambda p: p.write_bytes(b""), UNET, "truncated or corrupt safetensors file"),
    ("vae/config.json", _break_json, "vae/config.json", "not valid JSON"),
    ("text_encoder/config.json", _break_json, "text_encoder/config.json", "not valid JSON"),
    ("tokenizer/tokenizer.json", _break_json, "tokenizer/tokenizer.json", "not valid JSON"),
    ("scheduler/scheduler_config.json", _break_json, "scheduler/scheduler_config.json", "not valid JSON"),
    (TE, _drop_tensor, TE, "weights missing"),
    (UNET, _drop_tensor, UNET, "weights missing"),
    (VAE, _drop_tensor, VAE, "weights missing"),
    (UNET, Path.unlink, "unet", "no safetensors weights"),
    ("unet/config.json", _edit_config("cross_attention_dim", 48), UNET, "does not fit unet/config.json"),
    ("text_encoder/config.json", _edit_config("intermediate_size", 40), TE, "does not fit text_encoder/config.json"),
]


@pytest.fixture
def broken_copy(tmp_path, tiny_model_dir):
    def make(relative: str, breakage) -> Path:
        copy = tmp_path / "model"
        shutil.copytree(tiny_model_dir, copy)
        breakage(copy / relative)
        return copy
    return make


@pytest.mark.parametrize("relative, breakage, named, reason", BREAKAGES,
                         ids=[f"{r}-{getattr(b, '__name__', 'edit')}" for r, b, _, _ in BREAKAGES])
def test_broken_model_folder_is_one_line_naming_the_file(relative, breakage, named, reason, broken_copy, image,
                                                         tmp_path, capfd):
    model = broken_copy(relative, breakage)
    capfd.readouterr()
    assert main(["colorize", str(image), "-o", str(tmp_path / "out"), "--model", str(model)]) == 2
    line = _one_error_line(capfd)
    assert line.startswith(f"colordiff: error: cannot load model {model}: {named}"), line
    assert reason in line, line
    assert not re.search(r"Cannot load +because", line)  # no blank model name


def test_merge_decoder_and_init_model_name_the_broken_file(broken_copy, tiny_model_dir, tmp_path, capfd):
    from colordiff.testing import save_tiny_stable_diffusion

    model = broken_copy(TE, _truncate)
    capfd.readouterr()
    assert main(["merge-decoder", str(model), str(tiny_model_dir), "-o", str(tmp_path / "merged")]) == 2
    line = _one_error_line(capfd)
    assert line.startswith(f"colordiff: error: cannot load model {model}: {TE}: truncated or corrupt"), line
    assert not (tmp_path / "merged").exists()

    base = save_tiny_stable_diffusion(tmp_path / "sd15")
    _truncate(base / UNET)
    capfd.readouterr()
    assert main(["init-model", str(tmp_path / "new"), "--base", str(base), "--local-files-only"]) == 2
    line = _one_error_line(capfd)
    assert line.startswith(f"colordiff: error: cannot load Stable Diffusion weights from {base}: {UNET}: "
                           "truncated or corrupt safetensors file"), line
    assert not (tmp_path / "new").exists()


def test_training_base_model_load_error_is_a_usage_error(broken_copy, tmp_path, capfd):
    from accelerate.state import AcceleratorState, GradientState

    from colordiff.training.cli import run_script
    from colordiff.training.unet import TrainUNetConfig
    from colordiff.training.unet import main as train_main

    model = broken_copy(VAE, _truncate)
    capfd.readouterr()
    try:
        code = run_script(TrainUNetConfig, train_main, "test", [
            f"pretrained_model_name_or_path={model}", f"output_dir={tmp_path / 'out'}", "report_to=none",
            f"train_data_dir={tmp_path}", "validation_images=[]"])
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    assert code == 2
    err = capfd.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == \
        f"error: cannot load model {model}: {VAE}: truncated or corrupt safetensors file (Error while deserializing " \
        "header: incomplete metadata, file not fully covered)"


def test_a_good_model_folder_loads_quietly(tiny_model_dir, capfd):
    from colordiff.pipelines import load_pipeline

    capfd.readouterr()
    pipe = load_pipeline(tiny_model_dir)
    assert pipe.unet is not None
    err = capfd.readouterr().err
    assert "Traceback" not in err and "LOAD REPORT" not in err and "newly initialized" not in err
