"""The reproduction path on CPU with a tiny model: prepare -> colorize -> evaluate -> table (and the set configs)."""

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_metrics import load_tiny_features, write_tiny_weights

from colordiff import metrics as M
from colordiff.color import rgb_to_lab
from colordiff.config import load_config
from colordiff.evaluate import Protocol, apply_protocol
from colordiff.reproduce import EvalSetConfig, load_published

REPO = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _photo(h, w, seed):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * 255 / w, y * 255 / h, np.full((h, w), 50 + 40 * seed)], -1) + rng.normal(0, 8, (h, w, 3))
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _rgb(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _lab(rgb: np.ndarray) -> np.ndarray:
    return rgb_to_lab(torch.tensor(rgb).permute(2, 0, 1).double() / 255).numpy()  # (3, H, W)


@pytest.fixture
def originals(tmp_path):
    """A handful of generated photos, one in a subfolder, of different sizes (the protocol crops them)."""
    root = tmp_path / "originals"
    sizes = [(80, 100), (100, 72), (64, 64), (90, 120), (70, 70)]
    for i, (h, w) in enumerate(sizes):
        path = root / ("sub" if i == 1 else "") / f"photo{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_photo(h, w, i)).save(path, quality=95)
    return root


def test_prepare_colorize_evaluate_table(originals, tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(M.FID_VARIANTS, "tiny", load_tiny_features)
    weights = write_tiny_weights(tmp_path / "fid.safetensors")
    prepared, out = tmp_path / "prepared", tmp_path / "run"
    config = str(REPO / "configs" / "eval" / "cocostuff_val.yaml")  # names not known in advance; both papers' tables

    # prepare: protocol-cropped ground truths, their gray inputs, and the list of files used
    assert _script("prepare_eval").main(["--config", config, "--source", str(originals), "--out", str(prepared),
                                         "protocol.size=64"]) == 0
    entries = ["photo0.jpg", "photo2.jpg", "photo3.jpg", "photo4.jpg", "sub/photo1.jpg"]
    assert (prepared / "files.txt").read_text().split() == entries
    for entry in entries:
        stem = entry.removesuffix(".jpg")
        gt, gray = _rgb(prepared / "gt" / f"{stem}.png"), _rgb(prepared / "gray" / f"{stem}.png")
        np.testing.assert_array_equal(gt, apply_protocol(_rgb(originals / entry), Protocol(size=64)))
        assert gray.shape == (64, 64, 3) and (gray == gray[..., :1]).all()  # R = G = B
        assert np.abs(_lab(gray)[0] - _lab(gt)[0]).max() < 0.5  # the gray input keeps the ground truth's L
    assert load_config(EvalSetConfig, [prepared / "prepare.yaml"]).protocol.size == 64

    # colorize -> evaluate -> tables + grid
    repro = _script("reproduce_tables")
    argv = ["--config", config, "--model", str(tiny_model_dir), "--prepared", str(prepared), "--output-dir", str(out),
            "--fid-weights", str(weights), "protocol.size=64", "colorize_config=[configs/tiny/colorize.yaml]",
            "colorize_overrides=[steps=2]", "evaluation.fid_variant=tiny", "grid_count=3"]
    assert repro.main(argv) == 0
    first = capsys.readouterr()
    assert "5 colorized, 0 skipped" in first.err
    results = json.loads((out / "metrics.json").read_text())
    assert results["n_images"] == 5 and results["n_failed"] == 0

    # JSON == direct metric calls on the files
    stems = sorted(e.removesuffix(".jpg") for e in entries)
    pred = M.as_uint8_batch(np.stack([_rgb(out / "pred" / f"{s}.png") for s in stems]))  # (5, 3, 64, 64)
    gt = M.as_uint8_batch(np.stack([_rgb(prepared / "gt" / f"{s}.png") for s in stems]))
    cf, cf_gt = M.colorfulness(pred), M.colorfulness(gt)
    direct = {"colorfulness": cf.mean().item(), "colorfulness_hasler": M.colorfulness(pred, "hasler").mean().item(),
              "delta_cf": M.delta_cf(cf, cf_gt), "psnr": M.psnr(pred, gt).mean().item(),
              "fid": M.fid(pred, gt, load_tiny_features(weights))}
    for key, value in direct.items():
        assert results[key] == pytest.approx(value, rel=1e-12), key

    # table == JSON: the CSV carries full precision, the Markdown the papers' two decimals
    for name in ("colordiff_table1", "seada_table1"):
        published = load_published(name)
        with open(out / f"table_{name}.csv") as fh:
            rows = list(csv.reader(fh))
        assert rows[0] == ["method"] + published["columns"]
        paper_rows = published["sets"]["cocostuff_val"]["rows"]
        assert rows[1:-1] == [[str(v) if v is not None else "-" for v in row] for row in paper_rows]
        ours = rows[-1]
        assert ours[0] == "ColorDiff (this implementation)"
        assert [float(v) for v in ours[1:]] == [results[c] for c in published["columns"]]
        markdown = (out / f"table_{name}.md").read_text().splitlines()
        our_line = next(line for line in markdown if line.startswith("| **ColorDiff (this implementation)**"))
        assert our_line.split(" | ")[1:] == [f"{results[c]:.2f}" for c in published["columns"][:-1]] + \
            [f"{results[published['columns'][-1]]:.2f} |"]
        assert markdown[0].startswith(f"### {published['title']}") and markdown[0] in first.out
    seada = (out / "table_seada_table1.md").read_text()
    assert "| SeAda [paper 001, published] | 5.07 | 38.99 | 0.75 | 24.37 |" in seada
    colordiff = (out / "table_colordiff_table1.md").read_text()
    assert "| ColorDiff [paper 000, published] | 9.799 | 41.54 | 21.02 |" in colordiff

    # grid: gray | ours | GT for the first three files of the list, 4 px white gutters
    grid = _rgb(out / "grid.png")
    assert grid.shape == (3 * 64 + 2 * 4, 3 * 64 + 2 * 4, 3)
    for r, entry in enumerate(entries[:3]):
        stem = entry.removesuffix(".jpg")
        for c, path in enumerate([prepared / "gray", out / "pred", prepared / "gt"]):
            tile = grid[r * 68 : r * 68 + 64, c * 68 : c * 68 + 64]
            np.testing.assert_array_equal(tile, _rgb(path / f"{stem}.png"), err_msg=f"{stem} column {c}")
    saved = load_config(EvalSetConfig, [out / "config.yaml"])
    assert saved.evaluation.fid_variant == "tiny" and saved.model == str(tiny_model_dir)

    # resumable: a second run colorizes nothing and reproduces the same numbers
    assert repro.main(argv) == 0
    assert "0 colorized, 5 skipped (already done)" in capsys.readouterr().err
    assert json.loads((out / "metrics.json").read_text()) == results


def test_prepare_with_a_committed_list_reports_missing_files_and_resumes(originals, tmp_path, capsys):
    names = tmp_path / "list.txt"
    names.write_text("photo1.jpg\nphoto3.jpg\nphoto9.jpg\n")  # photo1 sits in a subfolder: matched by file name
    prepare = _script("prepare_eval").main
    argv = ["--config", "configs/eval/imagenet_val5k.yaml", "--source", str(originals), "--out", str(tmp_path / "p"),
            f"file_list={names}", "protocol.size=32", "protocol.crop=stretch"]
    assert prepare(argv) == 1
    err = capsys.readouterr().err
    assert f"photo9.jpg: not found under {originals}" in err and "prepared 2, 0 skipped (already done), 1 failed" in err
    stretched = np.asarray(Image.fromarray(_rgb(originals / "sub" / "photo1.jpg")).resize((32, 32), Image.BICUBIC))
    np.testing.assert_array_equal(_rgb(tmp_path / "p" / "gt" / "photo1.png"), stretched)
    assert (tmp_path / "p" / "files.txt").read_text().split() == ["photo1.jpg", "photo3.jpg", "photo9.jpg"]
    assert prepare(argv) == 1
    assert "prepared 0, 2 skipped (already done), 1 failed" in capsys.readouterr().err
    (originals / "photo1.jpg").write_bytes((originals / "sub" / "photo1.jpg").read_bytes())  # now two photo1.jpg
    assert prepare(argv + ["overwrite=true"]) == 1
    assert "photo1.jpg: ambiguous, several files under" in capsys.readouterr().err
    assert _script("reproduce_tables").main(["--config", "configs/eval/imagenet_val5k.yaml",
                                             "--prepared", str(tmp_path / "nothing")]) == 2
    assert "no prepared set" in capsys.readouterr().err


def test_eval_set_configs_lists_and_published_tables():
    lists = {"imagenet_val5k": [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, 5001)],
             "ade20k_val": [f"ADE_val_{i:08d}.jpg" for i in range(1, 2001)]}
    for name in ("imagenet_val5k", "cocostuff_val", "ade20k_val"):
        config = load_config(EvalSetConfig, [REPO / "configs" / "eval" / f"{name}.yaml"])
        assert config.name == name and config.protocol == Protocol(size=256, crop="center", resample="bicubic")
        if name in lists:
            assert (REPO / config.file_list).read_text().split() == lists[name]
        else:
            assert config.file_list is None and config.count == 5000
        for table in config.published:
            published = load_published(table)
            rows = published["sets"][name]["rows"]
            assert all(len(row) == 1 + len(published["columns"]) for row in rows)
    # a few cells, as printed in the papers
    seada = load_published("seada_table1")["sets"]
    assert seada["imagenet_val5k"]["rows"][-1] == ["SeAda [paper 001, published]", "3.36", "36.98", "1.23", "24.53"]
    assert seada["ade20k_val"]["rows"][9] == ["DDColor [Kang et al., 2023]", "8.21", "34.80", "0.24", "24.13"]
    assert len(seada["cocostuff_val"]["rows"]) == 13
    colordiff = load_published("colordiff_table1")["sets"]["cocostuff_val"]["rows"]
    assert colordiff[4] == ["CT2 [2]", "25.87", "39.64", "22.80"] and len(colordiff) == 7
