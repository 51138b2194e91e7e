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


def test_benchmark_samplers_mode_scores_every_run_against_ddim50(tmp_path, tiny_model_dir):
    from PIL import Image

    photos = tmp_path / "gray"
    photos.mkdir()
    for k in range(2):
        Image.open(REPO / "examples" / "photos" / ["kodim05.jpg", "kodim23.jpg"][k]).resize((64, 48)).save(
            photos / f"p{k}.png")
    runs = '[["DDIM 50","ddim",50,"model"],["UniPC 10","unipc",10,"model"],["LCM 4","lcm",4,"distilled"]]'
    report = _benchmark("mode=samplers", "device=cpu", f"samplers.model={tiny_model_dir}",
                        f"samplers.distilled={tmp_path / 'none'}", f"samplers.photos={photos}",
                        f"samplers.gt={photos}", f"samplers.work_dir={tmp_path / 'work'}", f"samplers.runs={runs}",
                        "samplers.resolution=64", "samplers.repeats=1")
    ddim, unipc, lcm = report["runs"]
    assert ddim["delta_ab_to_ddim50"] == 0 and ddim["speedup_vs_ddim50"] == 1
    assert unipc["delta_ab_to_ddim50"] > 0 and unipc["seconds_per_image"] > 0 and "psnr" in unipc
    assert lcm["skipped"].startswith("no distilled folder")
    assert sorted(p.name for p in (tmp_path / "work" / "unipc_10").iterdir()) == ["p0.png", "p1.png"]
