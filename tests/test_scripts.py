"""The scripts run and keep their output contract (not timing: benchmarks are never tests)."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _benchmark(*overrides: str) -> dict:
    """Run scripts/benchmark.py; its report is the JSON on the last line of stdout."""
    cmd = [sys.executable, str(REPO / "scripts" / "benchmark.py"), *overrides]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_benchmark_prints_json_contract_last():
    report = _benchmark("resolution=64", "steps=2", "batch_sizes=[1,2]", "warmup=0", "repeats=1")
    assert [run["batch_size"] for run in report["runs"]] == [1, 2]
    for run in report["runs"]:
        assert run["ours_s_per_image"] > 0 and run["baseline_s_per_image"] > 0
        assert abs(run["ratio"] - run["ours_s_per_image"] / run["baseline_s_per_image"]) < 1e-9
    worst = max(report["runs"], key=lambda r: r["ratio"])
    assert report["ratio"] == worst["ratio"] and report["config"]["steps"] == 2


def test_benchmark_train_mode_reports_every_step_kind():
    report = _benchmark("mode=train", "resolution=64", "train_batch_size=2", "warmup=0", "repeats=1")
    steps = report["train_steps"]
    assert set(steps) == {"unet_precomputed", "unet_vae_on_the_fly", "baseline_sd_finetune", "decoder",
                          "baseline_decoder_finetune"}
    for step in steps.values():
        assert step["images_per_s"] == 2 / step["s_per_step"] and step["peak_memory_gib"] is None  # CPU: no peak
    assert report["train_unet_images_per_s"] == steps["unet_precomputed"]["images_per_s"]
    # a time ratio, as in the inference mode: > 1 means our step is slower than the plain fine-tune step
    assert abs(report["train_ratio"] - steps["unet_precomputed"]["s_per_step"] /
               steps["baseline_sd_finetune"]["s_per_step"]) < 1e-9
