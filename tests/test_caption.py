"""scripts/caption.py (colordiff.caption_cache): the JSONL caption cache (gray and color captions), resumable,
sharded, bad files skipped."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from colordiff import caption_cache as caption
from colordiff.semantics import CaptionerConfig, build_generator, grayscale
from colordiff.semantics.testing import save_tiny_blip

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def blip(tmp_path_factory):
    return save_tiny_blip(tmp_path_factory.mktemp("blip") / "blip")


@pytest.fixture
def data(tmp_path):
    """Three good images (one in a subfolder) and a file that is not an image."""
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, shape in [("a.png", (40, 56, 3)), ("b.jpg", (48, 48, 3)), ("sub/c.png", (36, 60, 3))]:
        Image.fromarray((rng.random(shape) * 255).astype(np.uint8)).save(root / name)
    (root / "broken.jpg").write_text("not a JPEG")
    return root


def _args(data, output, blip, *extra):
    return [f"data_dir={data}", f"output={output}", f"captioner.source={blip}", "captioner.max_new_tokens=6",
            "captioner.num_beams=1", "captioner.batch_size=2", "device=cpu", *extra]


def _cache(path: Path) -> dict:
    return {r["path"]: r for r in map(json.loads, path.read_text().splitlines())}


def test_cache_holds_gray_and_color_captions_and_reports_bad_files(data, tmp_path, blip, capsys):
    output = tmp_path / "captions.jsonl"
    assert caption.main(_args(data, output, blip)) == 1  # one unreadable file
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if "broken.jpg" in line] == [
        f"caption: {data / 'broken.jpg'}: not a recognised image format"]
    assert "3 captioned, 0 skipped (already done), 1 failed" in err
    cache = _cache(output)
    assert sorted(cache) == ["a.png", "b.jpg", "sub/c.png"]  # the keys colordiff.data.list_images gives training
    assert not list(tmp_path.glob("captions.jsonl.part*"))
    captioner = build_generator(CaptionerConfig(source=str(blip), max_new_tokens=6, num_beams=1))
    for key, record in cache.items():
        rgb = np.asarray(Image.open(data / key).convert("RGB"), dtype=np.float32) / 255
        assert record["caption_gray"] == captioner(grayscale([rgb]))[0]
        assert record["caption_color"] == captioner([rgb])[0]
        assert record["captioner"] == f"blip:{blip}"
    assert any(r["caption_gray"] != r["caption_color"] for r in cache.values())


def test_resume_skips_done_entries_and_ignores_a_torn_line(data, tmp_path, blip, capsys):
    (data / "broken.jpg").unlink()
    output = tmp_path / "captions.jsonl"
    assert caption.main(_args(data, output, blip)) == 0
    complete = output.read_text()
    assert caption.main(_args(data, output, blip)) == 0
    assert "0 captioned, 3 skipped (already done), 0 failed" in capsys.readouterr().err
    # as if killed while writing: b.jpg never finished, its part file ends in half a line
    lines = complete.splitlines(keepends=True)
    output.write_text("".join(line for line in lines if '"b.jpg"' not in line))
    (tmp_path / "captions.jsonl.part0").write_text('{"path": "b.jpg", "caption_gr')
    assert caption.main(_args(data, output, blip)) == 0
    assert "1 captioned, 2 skipped (already done), 0 failed" in capsys.readouterr().err
    assert output.read_text() == complete and not list(tmp_path.glob("*.part*"))
    # another captioner's entries are not "done" for this one
    assert caption.main(_args(data, output, blip, "captioner.name=blip2", "versions=[gray]")) == 2  # not a BLIP-2
    assert "cannot load captioner 'blip2'" in capsys.readouterr().err


def test_shards_merge_into_the_single_process_cache(data, tmp_path, blip):
    (data / "broken.jpg").unlink()
    single, sharded = tmp_path / "single.jsonl", tmp_path / "sharded.jsonl"
    assert caption.main(_args(data, single, blip)) == 0
    config = caption.load_config(caption.CaptionConfig, [], _args(data, sharded, blip))
    assert caption.caption_shard(config, rank=0, world=2) == (2, 0, 0)  # every 2nd image: a.png, sub/c.png
    assert caption.caption_shard(config, rank=1, world=2) == (1, 0, 0)
    assert sorted(p.name for p in tmp_path.glob("sharded.jsonl.part*")) == ["sharded.jsonl.part0",
                                                                           "sharded.jsonl.part1"]
    assert caption.merge_cache(sharded) == 3
    assert sharded.read_text() == single.read_text()


def test_file_list_and_one_version(data, tmp_path, blip):
    (tmp_path / "list.txt").write_text("# two of them\nb.jpg\nsub/c.png\n")
    output = tmp_path / "gray.jsonl"
    assert caption.main(_args(data, output, blip, f"file_list={tmp_path / 'list.txt'}", "versions=[gray]")) == 0
    cache = _cache(output)
    assert sorted(cache) == ["b.jpg", "sub/c.png"] and all("caption_color" not in r for r in cache.values())
    assert caption.main(_args(data, output, blip, "versions=[sepia]")) == 2


@pytest.mark.slow
def test_accelerate_launch_shards_across_processes(data, tmp_path, blip):
    (data / "broken.jpg").unlink()
    output = tmp_path / "captions.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           str(REPO / "scripts" / "caption.py"), *_args(data, output, blip)]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 captioned, 0 skipped (already done), 0 failed [process 1/2]" in result.stderr
    assert "1 captioned, 0 skipped (already done), 0 failed [process 2/2]" in result.stderr
    assert sorted(_cache(output)) == ["a.png", "b.jpg", "sub/c.png"] and not list(tmp_path.glob("*.part*"))
