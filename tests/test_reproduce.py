"""The reproduction path on CPU with a tiny model: prepare -> colorize -> evaluate -> table (and the set configs)."""

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_metrics import load_tiny_features, write_tiny_weights

from colordiff import metrics as M
from colordiff.color import rgb_to_lab
from colordiff.config import load_config
from colordiff.protocol import Protocol, apply_protocol
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
        assert rows[0] == ["method"] + published["columns"] + ["source"]
        paper_rows = published["sets"]["cocostuff_val"]["rows"]
        assert rows[1:-1] == [[str(v) if v is not None else "-" for v in row] + ["published"] for row in paper_rows]
        ours = rows[-1]
        assert ours[0] == "ColorDiff (this implementation)" and ours[-1] == "ours"
        assert [float(v) for v in ours[1:-1]] == [results[c] for c in published["columns"]]
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


def test_ablation_configs_cover_every_published_row():
    """One config per ablation row: each names a row of its table, the set's settings come from its defaults."""
    covered: dict[str, list[str]] = {}
    outputs = set()
    for path in sorted((REPO / "configs" / "eval" / "ablations").glob("*.yaml")):
        config = load_config(EvalSetConfig, [path])
        base = load_config(EvalSetConfig, [REPO / "configs" / "eval" / f"{config.name}.yaml"])
        assert (config.prepared_dir, config.protocol, config.file_list) == \
            (base.prepared_dir, base.protocol, base.file_list), path.name  # the set's images, prepared once
        assert config.published == [path.stem.rsplit("_", 1)[0]] or path.stem.startswith(config.published[0])
        table = load_published(config.published[0])
        labels = [row[0] for row in table["sets"][config.name]["rows"]]
        assert config.row in labels, path.name
        covered.setdefault(config.published[0], []).append(config.row)
        assert config.model and config.output_dir not in outputs and config.output_dir != base.output_dir
        outputs.add(config.output_dir)
        assert config.pred_dir in (None, f"{base.output_dir}/pred"), path.name  # only the full model shares Table 1's
        for file in config.colorize_config + [o.split("=", 1)[1] for o in config.colorize_overrides
                                              if o.startswith("priors_config=")]:
            assert (REPO / file).is_file(), (path.name, file)
    assert set(covered) == {"colordiff_table2", "seada_table2", "seada_table3", "seada_table4", "seada_table5"}
    for name, rows in covered.items():
        published = load_published(name)
        (set_name,) = published["sets"]
        assert sorted(rows) == sorted(r[0] for r in published["sets"][set_name]["rows"]), name
    # a few cells, as printed in the papers
    assert load_published("colordiff_table2")["sets"]["cocostuff_val"]["rows"][1][1:] == ["9.917", "42.55"]
    assert load_published("seada_table2")["sets"]["imagenet_val5k"]["rows"][0][1:] == ["6.93", "4.31", "22.67"]
    assert load_published("seada_table3")["sets"]["imagenet_val5k"]["rows"][1][1:] == ["4.12", "1.82", "24.26"]
    assert load_published("seada_table4")["sets"]["imagenet_val5k"]["rows"][1][1:] == ["3.26", "1.23", "24.53"]
    assert load_published("seada_table5")["sets"]["imagenet_val5k"]["rows"][2][1:] == ["3.45", "1.46", "24.53"]


def test_ablation_rows_fill_the_whole_table(originals, tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(M.FID_VARIANTS, "tiny", load_tiny_features)
    weights = write_tiny_weights(tmp_path / "fid.safetensors")
    prepared, table_dir = tmp_path / "prepared", tmp_path / "seada_table4"
    assert _script("prepare_eval").main(["--config", "configs/eval/cocostuff_val.yaml", "--source", str(originals),
                                         "--out", str(prepared), "protocol.size=64"]) == 0
    repro = _script("reproduce_tables").main

    def run(row: str, *overrides: str) -> int:
        return repro(["--config", f"configs/eval/ablations/seada_table4_{row}.yaml", "--model", str(tiny_model_dir),
                      "--prepared", str(prepared), "--output-dir", str(table_dir / row), "--fid-weights",
                      str(weights), "protocol.size=64", "colorize_config=[configs/tiny/colorize.yaml]",
                      "evaluation.fid_variant=tiny", "grid_count=2", *overrides])

    def table() -> list[list[str]]:
        with open(table_dir / "table_seada_table4.csv") as fh:
            return list(csv.reader(fh))

    published = [[*row, "published"] for row in load_published("seada_table4")["sets"]["imagenet_val5k"]["rows"]]
    assert run("without_rca", "colorize_overrides=[steps=2]") == 0
    without = json.loads((table_dir / "without_rca" / "metrics.json").read_text())
    ours_without = ["w/o RCA (ours)"] + [repr(without[c]) for c in ("fid", "delta_cf", "psnr")] + ["ours"]
    assert table()[1:] == [published[0], ours_without, published[1]]  # our row right under the one it reproduces

    # the full-model row shares another run's colorized images (pred_dir); a different seed, so other numbers
    shared = tmp_path / "imagenet_val5k" / "pred"
    assert run("with_rca", "colorize_overrides=[steps=2,seed=1]", f"pred_dir={shared}") == 0
    assert len(list(shared.glob("*.png"))) == 4 and not (table_dir / "with_rca" / "pred").exists()
    with_rca = json.loads((table_dir / "with_rca" / "metrics.json").read_text())
    assert with_rca["fid"] != without["fid"]
    ours_with = ["with RCA (ours)"] + [repr(with_rca[c]) for c in ("fid", "delta_cf", "psnr")] + ["ours"]
    assert table()[1:] == [published[0], ours_without, published[1], ours_with]
    markdown = (table_dir / "table_seada_table4.md").read_text()
    assert f"| **with RCA (ours)** | {with_rca['fid']:.2f} | {with_rca['delta_cf']:.2f} | {with_rca['psnr']:.2f} |" \
        in markdown and "| w/o RCA | 4.57 | 2.85 | 23.31 |" in markdown
    # each run's own table holds its row only
    with open(table_dir / "with_rca" / "table_seada_table4.csv") as fh:
        assert list(csv.reader(fh))[1:] == [published[0], published[1], ours_with]

    # a row the table does not have stops the run before anything is colorized
    capsys.readouterr()
    assert run("without_rca", "row=w/o everything", f"output_dir={tmp_path / 'bad'}") == 2
    err = capsys.readouterr().err
    assert "row 'w/o everything' is not a row of SeAda (paper 001), Table 4: RCA (imagenet_val5k)" in err
    assert "rows: w/o RCA; with RCA" in err and not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_two_processes_split_colorizing_and_scoring(originals, tiny_model_dir, tmp_path, capsys):
    """`accelerate launch` with 2 CPU processes: the same predictions (per-file seeds), tables and metrics as one."""
    prepared = tmp_path / "prepared"
    assert _script("prepare_eval").main(["--config", "configs/eval/cocostuff_val.yaml", "--source", str(originals),
                                         "--out", str(prepared), "protocol.size=64"]) == 0
    args = ["--config", "configs/eval/ablations/colordiff_table2_a.yaml", "--model", str(tiny_model_dir),
            "--prepared", str(prepared), "protocol.size=64", "colorize_config=[configs/tiny/colorize.yaml]",
            "colorize_overrides=[steps=2,priors=none]", "evaluation.metrics=[colorfulness,psnr]", "grid_count=2"]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    multi, single = tmp_path / "table" / "multi", tmp_path / "table" / "single"
    result = subprocess.run([*launch, str(REPO / "scripts" / "reproduce_tables.py"), *args, "--output-dir",
                             str(multi)], capture_output=True, text=True, cwd=REPO, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    # each process colorized its share (every other file), then scored its share of the pairs
    assert "3 colorized, 0 skipped (already done), 0 failed [process 1/2]" in result.stderr
    assert "2 colorized, 0 skipped (already done), 0 failed [process 2/2]" in result.stderr
    # one process, scoring the same colorized images (it colorizes nothing): the same numbers, row for row
    assert _script("reproduce_tables").main([*args, "--output-dir", str(single), f"pred_dir={multi / 'pred'}"]) == 0
    assert "0 colorized, 5 skipped (already done)" in capsys.readouterr().err
    one, two = (json.loads((d / "metrics.json").read_text()) for d in (single, multi))
    assert one.pop("config") == two.pop("config") and one == two and one["n_images"] == 5
    assert (multi / "per_image.csv").read_text() == (single / "per_image.csv").read_text()
    with open(tmp_path / "table" / "table_colordiff_table2.csv") as fh:  # both runs are rows of the whole table
        ours = [row for row in csv.reader(fh) if row[-1] == "ours"]
    assert len(ours) == 2 and ours[0] == ours[1]


def test_a_launched_entry_point_ends_its_process_group(tmp_path):
    """The `__main__` of colorize / evaluate / caption / reproduce ends the process's gloo group before exit (left to
    interpreter exit, its threads can abort a process that has finished its work); with no group it does nothing."""
    import torch.distributed as dist

    from colordiff.devices import end_process_group

    assert end_process_group(0) == 0 and not dist.is_initialized()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert dist.is_initialized()
        assert end_process_group(3) == 3
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    for script in ("reproduce_tables", "evaluate", "caption"):
        assert "sys.exit(end_process_group(main()))" in (REPO / "scripts" / f"{script}.py").read_text()
    cli = (REPO / "colordiff" / "cli.py").read_text()  # the console script's `entry` and `python -m` alike
    assert "return end_process_group(main())" in cli and "sys.exit(entry())" in cli
    for script in ("train_unet", "train_decoder", "train_seada", "distill", "precompute_latents"):
        assert "sys.exit(end_process_group(run_script(" in (REPO / "scripts" / f"{script}.py").read_text()


def test_one_of_several_launched_processes_exits_with_its_status_after_the_exit_handlers():
    """With WORLD_SIZE > 1 (torchrun's), end_process_group ends the process itself once Python's exit handlers ran
    and the streams are flushed, with the status it was given; with one process it returns the status."""
    code = ("import atexit, sys\n"
            "from colordiff.devices import end_process_group\n"
            "atexit.register(print, 'exit handler ran')\n"
            "print('work done', end=' ')\n"
            "status = end_process_group(3)\n"
            "print('returned', status)\n")
    for world_size, returncode, stdout in (("2", 3, "work done exit handler ran\n"),
                                           ("1", 0, "work done returned 3\nexit handler ran\n")):
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                                env={**os.environ, "WORLD_SIZE": world_size}, timeout=120)
        assert (result.returncode, result.stdout) == (returncode, stdout), result.stderr[-2000:]
