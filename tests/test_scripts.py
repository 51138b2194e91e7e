"""The scripts run and keep their output contract (not timing: benchmarks are never tests)."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_benchmark_prints_json_contract_last():
    cmd = [sys.executable, str(REPO / "scripts" / "benchmark.py"), "resolution=64", "steps=2", "batch_sizes=[1,2]",
           "warmup=0", "repeats=1"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert [run["batch_size"] for run in report["runs"]] == [1, 2]
    for run in report["runs"]:
        assert run["ours_s_per_image"] > 0 and run["baseline_s_per_image"] > 0
        assert abs(run["ratio"] - run["ours_s_per_image"] / run["baseline_s_per_image"]) < 1e-9
    worst = max(report["runs"], key=lambda r: r["ratio"])
    assert report["ratio"] == worst["ratio"] and report["config"]["steps"] == 2
