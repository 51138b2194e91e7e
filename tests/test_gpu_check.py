"""scripts/gpu_check.py: its dry mode (--device cpu --tiny) runs every section with tiny models on the CPU and reports
each section's numbers, so that the check a GPU machine runs cannot rot; its GPU settings load as they are."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("gpu_check_under_test", REPO / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _finite(*values) -> bool:
    return all(isinstance(v, int | float) and math.isfinite(v) for v in values)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("gpu_check")
    run = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_check.py"), "--device", "cpu", "--tiny",
                          "--out", str(out)], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    return json.loads((out / "gpu_check.json").read_text()), out


def test_dry_mode_runs_every_section(dry_run):
    report, out = dry_run
    sections = report["sections"]
    assert list(sections) == list(_script().SECTIONS) and report["ok"] and report["tiny"]
    assert all(s["ok"] and _finite(s["seconds"]) for s in sections.values())
    assert report["seconds"] < report["budget_s"]
    assert sections["models"]["attention_processors"] == ["AttnProcessor2_0"]  # SDPA
    assert sections["gpu_tests"]["skipped"] == "no CUDA device"
    summary = (out / "gpu_check.md").read_text()
    assert summary.startswith("# GPU check: all passed") and all(f"| {name} |" in summary for name in sections)
    assert not (out / "gpu_check_work").exists()  # models and checkpoints are removed, the logs kept
    assert (out / "logs" / "train_unet.2.log").is_file()


def test_dry_mode_trains_checkpoints_and_resumes_every_script(dry_run):
    lanes = dry_run[0]["sections"]["training"]["lanes"]
    assert set(lanes) == {"unet", "unet_lora", "decoder", "distill", "seada_stage0", "seada_stage1", "seada_stage2",
                          "seada_stage3"}
    for name, lane in lanes.items():
        assert lane["ok"] and lane["problems"] == [], name
        assert [leg["returncode"] for leg in lane["launches"]] == [0, 0], name
        assert len(lane["losses"]) == 2 and _finite(*lane["losses"]), name  # one row per step, both launches


def test_dry_mode_measures_colorize_video_demo_and_benchmarks(dry_run):
    sections = dry_run[0]["sections"]
    colorize, video, demo = sections["colorize"], sections["video"], sections["demo"]
    assert colorize["written"] == colorize["images"] == 16 and colorize["max_abs_delta_L"] < 1.0
    assert _finite(colorize["s_per_image"], video["frames_per_s"], demo["run_seconds"])
    assert video["written"] == video["frames"] > 0
    benchmarks = sections["benchmarks"]["benchmarks"]
    assert set(benchmarks) == {"pipelines", "train", "seada", "guidance"}
    assert [run["batch_size"] for run in benchmarks["pipelines"]["runs"]] == [1, 2]
    assert all(_finite(run["ours_s_per_image"], run["ratio"]) for run in benchmarks["pipelines"]["runs"])
    assert all(_finite(step["images_per_s"]) for step in benchmarks["train"]["train_steps"].values())
    assert _finite(benchmarks["seada"]["inference"]["ratio"], *benchmarks["seada"]["training"].values())
    assert all(_finite(run["s_per_image"]) for run in benchmarks["guidance"]["runs"])


def test_gpu_settings_are_valid_recipe_and_benchmark_keys(tmp_path):
    """The GPU run's overrides load onto every script's schema and the benchmark configs (no typo waits for a GPU)."""
    from argparse import Namespace

    from colordiff.config import load_config
    from colordiff.training.decoder import TrainDecoderConfig
    from colordiff.training.distill import DistillConfig
    from colordiff.training.seada import TrainSeAdaConfig
    from colordiff.training.unet import TrainUNetConfig

    check = _script()
    schemas = {"train_unet.py": TrainUNetConfig, "train_decoder.py": TrainDecoderConfig,
               "train_seada.py": TrainSeAdaConfig, "distill.py": DistillConfig}
    run = check.Check(Namespace(tiny=False), check.GPU, __import__("torch").device("cuda"), tmp_path, tmp_path, 0.0,
                      models={"colordiff": tmp_path / "c", "seada": tmp_path / "s"})
    for lane in check.LANES:
        arguments = check.lane_arguments(run, lane, tmp_path / lane.name, tmp_path, 20)
        config = load_config(schemas[lane.script], [arguments[1]], arguments[2:])
        assert config.max_train_steps == 20 and config.checkpointing_steps == 10 and config.resolution == 512
        assert config.mixed_precision == "bf16" and config.gradient_accumulation_steps == 2
    script = check.load_benchmark_script()
    for files, overrides in check.GPU.benchmarks.values():
        config = load_config(script.BenchmarkConfig, [check.CONFIGS / "benchmark" / f for f in files], overrides)
        assert config.dtype == "bfloat16" and config.resolution == 512 and config.model_size == "sd15"
