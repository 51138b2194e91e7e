"""`colordiff colorize` under faults: odd file names, Ctrl-C, an unusable OUT, concurrent runs, huge images."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from colordiff import claims
from colordiff.cli import main
from colordiff.colorize_common import sample_seed
from colordiff.colorize_jobs import Job, plan_batches

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = ["--steps", "2", "--resolution", "64"]


def _photo(path: Path, seed: int, size=(40, 56)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "in"
    for k in range(3):
        _photo(root / f"p{k}.png", k)
    return root


def _colorize(folder, out, model, *extra) -> int:
    return main(["colorize", str(folder), "-o", str(out), "--model", str(model), *FAST, *extra])


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.rglob(".*"))


def test_a_file_name_that_is_not_utf8_is_colorized_with_the_others(folder, tmp_path, tiny_model_dir, capsys):
    odd = os.fsdecode(b"bad\xff.png")  # a name Linux allows and UTF-8 cannot encode
    _photo(folder / odd, 7)
    out = tmp_path / "out"
    assert _colorize(folder, out, tiny_model_dir, "--batch-size", "1") == 0
    assert "4 colorized, 0 skipped (already done), 0 failed" in capsys.readouterr().err
    assert (out / odd).is_file() and os.fsencode(out / odd).endswith(b"bad\xff.png")
    assert sample_seed(0, Path(odd), 0) != sample_seed(0, Path("bad\ufffd.png"), 0)  # the bytes, not a lossy text


def test_seeds_of_ordinary_names_are_unchanged():
    """Hashing the name's bytes gives UTF-8 names the seeds they always had (outputs stay reproducible)."""
    import hashlib

    for name in ("a.png", "sub/ünïcode photo.jpg"):
        before = hashlib.sha256(f"3\0{name}\0{1}".encode()).digest()
        assert sample_seed(3, Path(name), 1) == int.from_bytes(before[:8], "little") & (2**63 - 1)


def test_ctrl_c_prints_the_summary_so_far_and_exits_130(folder, tmp_path, tiny_model_dir, capsys, monkeypatch):
    from colordiff.pipelines import ColorDiffPipeline

    calls = {"n": 0}
    original = ColorDiffPipeline.__call__

    def interrupted_second_time(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ColorDiffPipeline, "__call__", interrupted_second_time)
    out = tmp_path / "out"
    assert _colorize(folder, out, tiny_model_dir, "--batch-size", "1") == 130
    err = capsys.readouterr().err
    assert "colordiff: 1 colorized, 0 skipped (already done), 0 failed, interrupted" in err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert sorted(p.name for p in out.iterdir()) == ["p0.png"]  # no claim or temp file left behind
    monkeypatch.setattr(ColorDiffPipeline, "__call__", original)
    assert _colorize(folder, out, tiny_model_dir) == 0  # and the next run finishes the rest
    assert "2 colorized, 1 skipped (already done)" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["is a file", "under a file", "not writable"])
def test_an_unusable_output_folder_is_a_usage_error_before_the_model_loads(folder, tmp_path, tiny_model_dir, capsys,
                                                                            monkeypatch, case):
    import colordiff.colorize as colorize
    import colordiff.colorize_common as common

    monkeypatch.setattr(colorize, "load_model", lambda *a: pytest.fail("the model must not load"))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = {"is a file": blocker, "under a file": blocker / "out", "not writable": tmp_path / "ro"}[case]
    if case == "not writable":  # root ignores mode bits, so the refusal the filesystem would give is simulated
        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(common.tempfile, "mkstemp", refuse)
    assert _colorize(folder, out, tiny_model_dir) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(out) in err and case.split()[-1] in err


def test_an_output_claimed_by_a_live_run_is_left_to_it(folder, tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "out"
    assert claims.acquire(out / "p1.png")  # this process is alive: the claim is live
    try:
        assert _colorize(folder, out, tiny_model_dir) == 0
    finally:
        claims.release(out / "p1.png")
    err = capsys.readouterr().err
    assert "2 colorized, 0 skipped (already done), 0 failed, 1 left to another run computing them" in err
    assert sorted(p.name for p in out.iterdir()) == ["p0.png", "p2.png"]


def test_a_stale_claim_of_a_killed_run_is_taken_over(folder, tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "out"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    claim = claims.claim_path(out / "p1.png")
    claim.parent.mkdir(parents=True)
    claim.write_text(json.dumps({"host": os.uname().nodename, "pid": int(dead.stdout), "time": 0}))
    assert _colorize(folder, out, tiny_model_dir) == 0
    assert "3 colorized" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["p0.png", "p1.png", "p2.png"]  # the claim is gone too


def test_claims_exclude_each_other(tmp_path):
    target = tmp_path / "x.png"
    assert claims.acquire(target)
    assert not claims.acquire(target)  # held by a live process (this one)
    claims.release(target)
    assert claims.acquire(target)
    claims.release(target)
    assert not claims.claim_path(target).exists()


def test_two_concurrent_runs_never_compute_the_same_output(folder, tmp_path, tiny_model_dir):
    """Two processes on one OUT: every output is written once, by one of them."""
    for k in range(3, 8):
        _photo(folder / f"p{k}.png", k)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "colordiff.cli", "colorize", str(folder), "-o", str(out), "--model",
               str(tiny_model_dir), *FAST, "--batch-size", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = [subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    summaries = [run.communicate(timeout=300)[1].strip().splitlines()[-1] for run in runs]
    assert [run.returncode for run in runs] == [0, 0]
    colorized = [int(s.split("colordiff: ")[1].split()[0]) for s in summaries]
    assert sum(colorized) <= 8 and sorted(p.name for p in out.iterdir()) == [f"p{k}.png" for k in range(8)]
    # whatever one run colorized the other skipped or left: no output was computed twice
    assert sum(colorized) == 8, summaries


def test_batches_hold_at_most_the_pixel_budget_and_a_large_image_runs_alone(tmp_path):
    sizes = [(40, 50), (40, 50), (200, 100), (40, 50), (40, 50), (40, 50)]
    jobs = [Job(_photo(tmp_path / f"{k}.png", k, size), Path(f"{k}.png"), []) for k, size in enumerate(sizes)]
    batches = [([j.relative.name for j in batch], pixels) for batch, pixels in plan_batches(jobs, 4, 5000)]
    assert batches == [(["0.png", "1.png"], 4000), (["2.png"], 20000), (["3.png", "4.png"], 4000), (["5.png"], 2000)]
    assert [len(b) for b, _ in plan_batches(jobs, 2, 10**9)] == [2, 2, 2]  # without a budget: batch_size alone


def test_fifos_and_broken_links_in_a_folder_are_named_and_counted(folder, tmp_path, tiny_model_dir, capsys):
    os.mkfifo(folder / "pipe.png")
    (folder / "gone.jpg").symlink_to(folder / "nowhere.jpg")
    (folder / "loop.png").symlink_to(folder / "loop.png")
    out = tmp_path / "out"
    assert _colorize(folder, out, tiny_model_dir) == 0  # every real photo colorized
    err = capsys.readouterr().err
    assert f"{folder / 'pipe.png'}: not a regular file (named pipe); skipped" in err
    assert f"{folder / 'gone.jpg'}: broken symbolic link; skipped" in err
    assert f"{folder / 'loop.png'}: symbolic link loop; skipped" in err
    assert "3 colorized, 0 skipped (already done), 0 failed, 3 entries not readable files (named above)" in err


def test_a_fifo_named_on_the_command_line_is_not_a_regular_file(tmp_path, tiny_model_dir, capsys):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    good = _photo(tmp_path / "good.png", 1)
    out = tmp_path / "out"
    assert main(["colorize", str(fifo), str(good), "-o", str(out), "--model", str(tiny_model_dir), *FAST]) == 1
    err = capsys.readouterr().err
    assert f"{fifo}: not a regular file (named pipe)" in err and "input not found" not in err
    assert "1 colorized, 0 skipped (already done), 1 failed" in err


def test_animated_and_multipage_files_say_only_their_first_frame_is_colorized(tmp_path, tiny_model_dir, capsys):
    frames = [Image.fromarray(np.full((32, 32, 3), 40 * k, np.uint8)) for k in range(3)]
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("anim.webp", "pages.tif", "anim.gif"):  # .gif is not an image suffix in folders: named below
        frames[0].save(folder / name, save_all=True, append_images=frames[1:])
    assert main(["colorize", str(folder), str(folder / "anim.gif"), "-o", str(tmp_path / "out"), "--model",
                 str(tiny_model_dir), *FAST]) == 0
    err = capsys.readouterr().err
    for name in ("anim.webp", "pages.tif", "anim.gif"):
        assert f"{folder / name}: 3 frames; only the first is colorized" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["anim.png", "anim.webp", "pages.tif"]


def test_stale_temps_a_killed_run_left_in_out_are_removed_and_nothing_else(folder, tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    stale_file = out / "sub" / f".p0.png.{'ab' * 16}.tmp"
    stale_folder = out / ".model.tmp-0123abcd"
    stale_file.write_bytes(b"half an image")
    stale_folder.mkdir()
    keep = [out / ".hidden.tmp", out / "notes.txt", out / f".p0.png.{'ab' * 15}.tmp"]
    for path in keep:
        path.write_text("user file")
    for path in (stale_file, stale_folder, *keep):
        os.utime(path, (0, 0))  # long untouched
    assert _colorize(folder, out, tiny_model_dir) == 0
    assert not stale_file.exists() and not stale_folder.exists()
    assert all(path.read_text() == "user file" for path in keep)
