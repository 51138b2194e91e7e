"""`colordiff evaluate`: pairing, protocol, errors, and JSON / CSV values equal to direct metric calls."""

import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image
from safetensors.torch import save_file
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from test_metrics import load_tiny_features, write_tiny_weights

from colordiff import metrics as M
from colordiff.cli import main
from colordiff.config import ConfigError
from colordiff.protocol import Protocol, apply_protocol, check_protocol, load_pair, pair_folders, read_uint8

REPO = Path(__file__).resolve().parents[1]


def _smooth(h, w, seed):
    """A smooth color image with some texture (uint8 (H, W, 3))."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([np.sin(3 * x + seed), np.cos(2 * y - seed), x * y], -1) * 100 + 120
    return np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)


def _save(path: Path, rgb: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, **kwargs)
    return path


@pytest.fixture
def folders(tmp_path):
    """gt/ with JPEG and PNG in a subfolder, pred/ as PNG with the same relative names; sizes vary (protocol crops)."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    sizes = {"a": (48, 40), "sub/b": (40, 56), "c": (32, 32), "sub/deeper/d": (36, 50)}
    for i, (name, (h, w)) in enumerate(sizes.items()):
        truth = _smooth(h, w, i)
        _save(gt / f"{name}.JPEG" if i % 2 == 0 else gt / f"{name}.png", truth, quality=98)
        guess = np.clip(truth.astype(int) // 2 + np.array([60, 20, -10]) * (i + 1) // 2 + 40, 0, 255)
        _save(pred / f"{name}.png", guess.astype(np.uint8))
    (gt / "notes.txt").write_text("not an image: ignored")
    return pred, gt


@pytest.fixture
def tiny_fid(tmp_path, monkeypatch):
    monkeypatch.setitem(M.FID_VARIANTS, "tiny", load_tiny_features)
    return write_tiny_weights(tmp_path / "tiny_fid.safetensors")


def _direct(pred_dir: Path, gt_dir: Path, names: list[str], protocol: Protocol):
    """Read the pairs ourselves and apply the protocol: uint8 (B, 3, S, S) tensors for direct metric calls."""
    def load(folder, name):
        path = next(folder.glob(f"{name}.*"))
        return apply_protocol(np.asarray(Image.open(path).convert("RGB")), protocol)
    pred = M.as_uint8_batch(np.stack([load(pred_dir, n) for n in names]))
    gt = M.as_uint8_batch(np.stack([load(gt_dir, n) for n in names]))
    return pred, gt


def test_evaluate_json_and_csv_equal_direct_metric_calls(folders, tiny_fid, tmp_path, capsys):
    pred_dir, gt_dir = folders
    out_json, out_csv = tmp_path / "res" / "metrics.json", tmp_path / "res" / "per_image.csv"
    code = main(["evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "--metrics", "colorfulness", "psnr", "ssim",
                 "fid", "--fid-variant", "tiny", "--fid-weights", str(tiny_fid), "--json", str(out_json),
                 "--csv", str(out_csv), "--size", "24", "batch_size=3"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    results = json.loads(out_json.read_text())
    assert json.loads(captured.out) == results  # printed too
    for key in ("colorfulness", "colorfulness_hasler", "delta_cf", "psnr", "fid", "n_images", "config"):
        assert key in results
    assert results["n_images"] == 4 and results["n_failed"] == 0
    assert results["config"]["protocol"] == {"size": 24, "crop": "center", "resample": "bicubic",
                                           "crop_border": 0}
    assert results["config"]["batch_size"] == 3 and results["config"]["fid_variant"] == "tiny"

    names = ["a", "c", "sub/b", "sub/deeper/d"]  # sorted relative paths
    pred, gt = _direct(pred_dir, gt_dir, names, Protocol(size=24))
    assert pred.shape == (4, 3, 24, 24)
    cf, cf_gt = M.colorfulness(pred), M.colorfulness(gt)
    expect = {"colorfulness": cf.mean().item(), "colorfulness_hasler": M.colorfulness(pred, "hasler").mean().item(),
              "colorfulness_gt": cf_gt.mean().item(), "delta_cf": M.delta_cf(cf, cf_gt),
              "delta_cf_per_image": M.delta_cf_per_image(cf, cf_gt),
              "psnr": M.psnr(pred, gt).mean().item(), "ssim": M.ssim(pred, gt).mean().item(),
              # same batches as the job: with 4 images and 8 features the covariances are singular, and the
              # square roots of their ~0 eigenvalues turn float64 summation order into 1e-8 differences
              "fid": M.fid(pred, gt, load_tiny_features(tiny_fid), batch_size=3)}
    for key, value in expect.items():
        assert results[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key
    assert results["delta_cf"] == pytest.approx(abs(results["colorfulness"] - results["colorfulness_gt"]), rel=1e-15)
    assert results["fid"] > 0

    rows = list(csv.DictReader(out_csv.open()))
    assert [r["image"] for r in rows] == names
    per_image = {"colorfulness": cf, "colorfulness_gt": cf_gt, "delta_cf": (cf - cf_gt).abs(),
                 "psnr": M.psnr(pred, gt), "ssim": M.ssim(pred, gt)}
    for i, row in enumerate(rows):
        for key, values in per_image.items():
            assert float(row[key]) == pytest.approx(values[i].item(), rel=1e-12), (row["image"], key)

    # the thin script is the same job
    spec = importlib.util.spec_from_file_location("evaluate_script", REPO / "scripts" / "evaluate.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--pred", str(pred_dir), "--gt", str(gt_dir), "--size", "24", "--metrics", "psnr"]) == 0
    assert json.loads(capsys.readouterr().out)["psnr"] == pytest.approx(results["psnr"], rel=1e-12)


def test_protocol_matches_torchvision_resize_and_center_crop():
    image = _smooth(50, 81, 3)
    expected = T.CenterCrop(32)(T.Resize(32, interpolation=T.InterpolationMode.BICUBIC)(Image.fromarray(image)))
    np.testing.assert_array_equal(apply_protocol(image, Protocol(size=32)), np.asarray(expected))
    tall = _smooth(77, 40, 4)
    expected = T.CenterCrop(32)(T.Resize(32, interpolation=T.InterpolationMode.BICUBIC)(Image.fromarray(tall)))
    np.testing.assert_array_equal(apply_protocol(tall, Protocol(size=32)), np.asarray(expected))
    stretched = np.asarray(Image.fromarray(image).resize((32, 32), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(apply_protocol(image, Protocol(size=32, crop="stretch")), stretched)
    assert apply_protocol(image, Protocol(size=0)) is image  # native size
    square = _smooth(32, 32, 5)
    assert apply_protocol(square, Protocol(size=32)) is square  # already at the size: untouched


def _ddcolor_resize(path: Path, width: int, height: int) -> np.ndarray:
    """DDColor's loader step by step (basicsr imfrombytes(float32=True), then cv2.resize with its default filter, BGR
    as cv2 reads it), rounded to 8-bit the way its tensor2img writes images: uint8 RGB (height, width, 3)."""
    img = cv2.imread(str(path)).astype(np.float32) / 255.0
    img = cv2.cvtColor(cv2.resize(img, (width, height)), cv2.COLOR_BGR2RGB)
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("photo", sorted((REPO / "examples" / "photos").glob("*.jpg")), ids=lambda p: p.stem)
def test_cv2_resample_is_ddcolors_resize_and_not_pil_bilinear(photo):
    rgb = read_uint8(photo)
    (h, w), size = rgb.shape[:2], 96
    stretched = apply_protocol(rgb, Protocol(size=size, crop="stretch", resample="cv2"))
    np.testing.assert_array_equal(stretched, _ddcolor_resize(photo, size, size))
    # center: cv2 scales the shorter side to size (torchvision's arithmetic), then the central square is cut
    new_h, new_w = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
    top, left = round((new_h - size) / 2), round((new_w - size) / 2)
    centered = apply_protocol(rgb, Protocol(size=size, resample="cv2"))
    np.testing.assert_array_equal(centered, _ddcolor_resize(photo, new_w, new_h)[top : top + size, left : left + size])
    assert centered.shape == (size, size, 3) and min(new_h, new_w) == size < min(h, w)
    # not a no-op alias of PIL's bilinear filter (antialiased when shrinking, unlike cv2's INTER_LINEAR)
    for crop, ours in (("stretch", stretched), ("center", centered)):
        pil = apply_protocol(rgb, Protocol(size=size, crop=crop, resample="bilinear"))
        assert np.abs(ours.astype(int) - pil).mean() > 0.5, crop


def test_cv2_resample_for_size_mismatch_and_protocol_errors(tmp_path):
    pred, gt = _save(tmp_path / "p.png", _smooth(30, 34, 2)), _save(tmp_path / "g.png", _smooth(32, 32, 3))
    p, g = load_pair(pred, gt, Protocol(size=0, resample="cv2"), on_size_mismatch="resize")
    np.testing.assert_array_equal(p, _ddcolor_resize(pred, 32, 32))
    np.testing.assert_array_equal(g, read_uint8(gt))
    assert not np.array_equal(p, load_pair(pred, gt, Protocol(size=0, resample="bilinear"), "resize")[0])
    with pytest.raises(ConfigError, match="must be one of bicubic, bilinear, lanczos, cv2, got 'area'"):
        check_protocol(Protocol(resample="area"))
    with pytest.raises(ConfigError, match="crop_border must be 0 or more pixels, got -1"):
        check_protocol(Protocol(crop_border=-1))
    with pytest.raises(ConfigError, match="crop_border 16 leaves nothing of a 32 px image"):
        check_protocol(Protocol(size=32, crop_border=16))
    check_protocol(Protocol(size=32, crop_border=15, resample="cv2"))
    # OpenCV is imported only when the cv2 filter is used
    code = "import sys, colordiff.protocol; assert 'cv2' not in sys.modules, 'cv2 imported eagerly'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]


def test_crop_border_cuts_psnr_and_ssim_only(tmp_path, capsys):
    gt_rgb = _smooth(40, 36, 7)
    pred_rgb = np.clip(gt_rgb.astype(int) + np.random.default_rng(1).integers(-6, 7, gt_rgb.shape), 0, 255)
    pred_rgb[:4] = pred_rgb[-4:] = 255  # a wrong border, 4 px wide on each side
    pred_rgb[:, :4] = pred_rgb[:, -4:] = 0
    pred_rgb = pred_rgb.astype(np.uint8)
    _save(tmp_path / "gt" / "x.png", gt_rgb), _save(tmp_path / "pred" / "x.png", pred_rgb)
    args = ["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--size", "0",
            "--metrics", "psnr", "ssim", "colorfulness"]
    assert main([*args, "--crop-border", "4"]) == 0
    cropped = json.loads(capsys.readouterr().out)
    assert main(args) == 0
    whole = json.loads(capsys.readouterr().out)
    assert cropped["config"]["protocol"]["crop_border"] == 4 and whole["config"]["protocol"]["crop_border"] == 0
    p, g = pred_rgb[4:-4, 4:-4], gt_rgb[4:-4, 4:-4]
    assert cropped["psnr"] == pytest.approx(peak_signal_noise_ratio(g, p, data_range=255), rel=1e-12)
    assert cropped["ssim"] == pytest.approx(structural_similarity(g, p, data_range=255, channel_axis=-1), rel=1e-9)
    assert whole["psnr"] == pytest.approx(peak_signal_noise_ratio(gt_rgb, pred_rgb, data_range=255), rel=1e-12)
    assert cropped["psnr"] > whole["psnr"] + 5 and cropped["ssim"] > whole["ssim"]
    for key in ("colorfulness", "colorfulness_gt", "delta_cf", "delta_cf_per_image"):  # the whole images
        assert cropped[key] == whole[key], key
    assert whole["colorfulness"] == pytest.approx(M.colorfulness(pred_rgb).item(), rel=1e-12)
    assert main([*args, "--crop-border", "-2"]) == 2
    assert "protocol.crop_border must be 0 or more pixels, got -2" in capsys.readouterr().err
    assert main([*args, "--crop-border", "18"]) == 2  # native size: checked against the image, 36 px wide
    assert "protocol.crop_border 18 leaves nothing of a 36 x 40 image" in capsys.readouterr().err


def test_delta_cf_per_image_against_hand_computation(tmp_path, capsys):
    """Two pairs: a prediction more colorful than its gray ground truth, and a gray prediction of a colorful one.
    The gap between set means lets the two errors cancel; the per-image mean does not."""
    gray = np.full((8, 12, 3), 120, np.uint8)  # CF = 0 in both variants
    halves = np.zeros((8, 12, 3), np.uint8)
    halves[:, :6], halves[:, 6:] = (255, 0, 0), (0, 0, 255)  # test_metrics' red | blue image
    cf_halves = {"abs": math.sqrt(127.5**2 + 63.75**2) + 0.3 * math.sqrt(127.5**2 + 191.25**2),
                 "hasler": math.sqrt(127.5**2 + 191.25**2) + 0.3 * math.sqrt(127.5**2 + 63.75**2)}
    tinted = np.full((8, 12, 3), (100, 150, 125), np.uint8)  # uniform: rg = -50, yb = 0, CF = 0.3 * 50 = 15 (both)
    _save(tmp_path / "pred" / "a.png", halves), _save(tmp_path / "gt" / "a.png", gray)
    _save(tmp_path / "pred" / "b.png", gray), _save(tmp_path / "gt" / "b.png", tinted)
    out_csv = tmp_path / "rows.csv"
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--size", "0",
                 "--metrics", "colorfulness", "--csv", str(out_csv)]) == 0
    results = json.loads(capsys.readouterr().out)
    for variant, suffix in (("abs", ""), ("hasler", "_hasler")):
        cf = cf_halves[variant]
        assert results[f"delta_cf{suffix}"] == pytest.approx(abs((cf + 0) / 2 - (0 + 15) / 2), rel=1e-12), variant
        assert results[f"delta_cf_per_image{suffix}"] == pytest.approx((cf + 15) / 2, rel=1e-12), variant
    assert results["delta_cf_per_image"] - results["delta_cf"] == pytest.approx(15, rel=1e-12)
    rows = list(csv.DictReader(out_csv.open()))
    assert [r["image"] for r in rows] == ["a", "b"]
    assert float(rows[0]["delta_cf"]) == pytest.approx(cf_halves["abs"], rel=1e-12)
    assert float(rows[1]["delta_cf"]) == pytest.approx(15, rel=1e-12)
    assert float(rows[1]["delta_cf_hasler"]) == pytest.approx(15, rel=1e-12)


def test_pairing_errors_name_the_files(folders, capsys):
    pred_dir, gt_dir = folders
    (pred_dir / "c.png").unlink()
    _save(pred_dir / "extra.png", _smooth(20, 20, 9))
    assert main(["evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "do not pair up" in err[0]
    assert f"1 ground truths have no prediction ({gt_dir / 'c.JPEG'})" in err[0]
    assert f"1 predictions have no ground truth ({pred_dir / 'extra.png'})" in err[0]

    (pred_dir / "extra.png").unlink()
    _save(pred_dir / "c.png", _smooth(32, 32, 2))
    _save(pred_dir / "c.jpg", _smooth(32, 32, 2))  # c.png and c.jpg: which one is c?
    assert main(["evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir)]) == 2
    assert "pairing is ambiguous: c.jpg / c.png" in capsys.readouterr().err
    assert main(["evaluate", "--pred", str(pred_dir / "missing"), "--gt", str(gt_dir)]) == 2
    assert "pred folder not found" in capsys.readouterr().err


def test_size_mismatch_bad_files_and_missing_fid_weights(folders, tmp_path, capsys):
    pred_dir, gt_dir = folders
    _save(pred_dir / "c.png", _smooth(30, 34, 2))  # gt c is 32 x 32
    (pred_dir / "sub" / "b.png").write_bytes(b"\x89PNG truncated")
    out = tmp_path / "r.json"
    code = main(["evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "--json", str(out), "--size", "0",
                 "--metrics", "psnr"])
    err = capsys.readouterr().err
    assert code == 1  # the job goes on and reports
    assert f"{pred_dir / 'c.png'}: 34 x 30 but its ground truth {gt_dir / 'c.JPEG'} is 32 x 32" in err
    assert f"{pred_dir / 'sub' / 'b.png'}:" in err and "evaluated 2 image pairs, 2 failed" in err
    results = json.loads(out.read_text())
    assert results["n_images"] == 2 and results["n_failed"] == 2 and len(results["failed"]) == 2
    per = [M.psnr(*_direct(pred_dir, gt_dir, [name], Protocol(size=0))).item() for name in ("a", "sub/deeper/d")]
    assert results["psnr"] == pytest.approx(np.mean(per), rel=1e-12)  # native sizes differ: one pair at a time

    # on_size_mismatch=resize: the prediction is resized to its ground truth's size
    (pred_dir / "sub" / "b.png").unlink()
    (gt_dir / "sub" / "b.png").unlink()
    assert main(["evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "--json", str(out), "--size", "0",
                 "--metrics", "psnr", "--on-size-mismatch", "resize"]) == 0
    capsys.readouterr()
    resized = np.asarray(Image.open(pred_dir / "c.png").convert("RGB").resize((32, 32), Image.Resampling.BICUBIC))
    expected = M.psnr(resized, np.asarray(Image.open(gt_dir / "c.JPEG").convert("RGB"))).item()
    assert json.loads(out.read_text())["psnr"] == pytest.approx(np.mean([per[0], expected, per[1]]), rel=1e-12)

    # FID asked for without weights: a usage error before any work; by default FID is just left out
    assert main(["evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "--metrics", "fid"]) == 2
    assert "FID needs local Inception weights: pass --fid-weights FILE" in capsys.readouterr().err
    assert main(["evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "--fid-weights", str(tmp_path / "no.pth"),
                 "--on-size-mismatch", "resize"]) == 2
    assert f"{tmp_path / 'no.pth'}: torch-fidelity InceptionV3 weights file not found" in capsys.readouterr().err
    assert main(["evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "--on-size-mismatch", "resize"]) == 0
    assert "fid" not in json.loads(capsys.readouterr().out)
    assert main(["evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "--metrics", "sharpness"]) == 2
    assert "unknown metric 'sharpness'" in capsys.readouterr().err


def test_ground_truth_against_itself(folders, tiny_fid, capsys):
    _, gt_dir = folders
    assert main(["evaluate", "--pred", str(gt_dir), "--gt", str(gt_dir), "--fid-variant", "tiny",
                 "--fid-weights", str(tiny_fid), "--size", "24"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert results["psnr"] is None  # inf: identical images; JSON has no infinity
    assert results["delta_cf"] == 0.0 and results["colorfulness"] == results["colorfulness_gt"] > 0
    assert abs(results["fid"]) < 1e-6  # singular 8x8 covariances of 4 images: sqrt of ~0 eigenvalues
    assert results["fid_weights_sha256"] == M.file_sha256(tiny_fid) and len(results["fid_weights_sha256"]) == 64
    assert torch.is_tensor(M.colorfulness(np.zeros((8, 8, 3), np.uint8)))


# run by every launched process: `colordiff` (colordiff.cli.main) with test_metrics' tiny FID extractor registered,
# counting the images whose features this process extracts
_LAUNCHER = """
import os, sys
from pathlib import Path
import torch.distributed as dist
sys.path.insert(0, {tests!r})
from test_metrics import load_tiny_features
from colordiff import metrics as M
from colordiff.cli import main

seen = []
def tiny(path):
    extractor = load_tiny_features(path)
    extractor.num_features = int(extractor.proj.shape[0])  # no probe image
    extractor.register_forward_hook(lambda module, args, out: seen.append(len(out)))
    return extractor

M.FID_VARIANTS["tiny"] = tiny
status = main()
Path({log!r}, "features." + os.environ["RANK"]).write_text(str(sum(seen)))
dist.barrier()  # both counts written before a status-1 exit gets the other process stopped
sys.exit(status)
"""


@pytest.mark.slow
def test_accelerate_launch_splits_pairs_and_equals_one_process(tmp_path, monkeypatch, capsys):
    """Two CPU processes (gloo) each score every other pair; rows, failures and FID statistics are combined, so the
    JSON and CSV equal one process's. Native sizes differ (shape groups within batches) and one file is broken."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    for i in range(9):  # 8 pairs scored: 4 on each process, one of which also reports the broken file
        truth = _smooth(24 + 4 * (i % 3), 28 + 2 * (i % 2), i)
        _save(gt / ("sub" if i % 4 == 1 else "") / f"im{i}.png", truth)
        guess = np.clip(truth.astype(int) // 2 + 12 * i + 30, 0, 255).astype(np.uint8)
        _save(pred / ("sub" if i % 4 == 1 else "") / f"im{i}.png", guess)
    (pred / "im4.png").write_bytes(b"\x89PNG truncated")
    # 4 features, fewer than the 8 images: full-rank covariances, so summation order only moves the FID by rounding
    weights = tmp_path / "tiny4.safetensors"
    save_file({"proj": torch.randn(4, 48, generator=torch.Generator().manual_seed(0))}, str(weights))
    args = ["evaluate", "--pred", str(pred), "--gt", str(gt), "--metrics", "colorfulness", "psnr", "ssim", "fid",
            "--fid-variant", "tiny", "--fid-weights", str(weights), "--size", "0", "batch_size=2"]

    launcher = tmp_path / "launch_colordiff.py"
    multi = tmp_path / "multi"
    launcher.write_text(_LAUNCHER.format(tests=str(Path(__file__).resolve().parent), log=str(tmp_path)))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(launcher), *args,
           "--json", str(multi / "r.json"), "--csv", str(multi / "r.csv")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    # status 1 (a pair failed) from both processes, after the main one wrote the files; no process crashed
    assert result.returncode == 1, result.stderr[-3000:]
    assert "[rank" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.count("evaluated 8 image pairs, 1 failed") == 1  # only the main process prints
    assert result.stderr.count(f"{pred / 'im4.png'}: not a recognised image format") == 1  # by its process
    assert json.loads(result.stdout) == json.loads((multi / "r.json").read_text())
    # each process extracted FID features of its share only, pairs[rank::2] (pred and gt of every readable pair)
    keys = [key for key, _, _ in pair_folders(pred, gt)]
    for rank in (0, 1):
        share = [key for key in keys[rank::2] if key != "im4"]
        assert int((tmp_path / f"features.{rank}").read_text()) == 2 * len(share), rank

    monkeypatch.setitem(M.FID_VARIANTS, "tiny", load_tiny_features)
    single = tmp_path / "single"
    assert main([*args, "--json", str(single / "r.json"), "--csv", str(single / "r.csv")]) == 1
    capsys.readouterr()

    one, two = (json.loads((d / "r.json").read_text()) for d in (single, multi))
    for results in (one, two):
        results["config"].pop("json"), results["config"].pop("csv")
    assert two["n_images"] == one["n_images"] == 8 and two["failed"] == one["failed"] and two["n_failed"] == 1
    assert two["config"] == one["config"]
    assert two["fid"] == pytest.approx(one["fid"], rel=1e-6) and one["fid"] > 0.01
    for key, value in one.items():
        if isinstance(value, float) and key != "fid":
            assert two[key] == pytest.approx(value, rel=1e-9, abs=0), key  # rows in one order: the same means
    assert two.keys() == one.keys()

    rows_one, rows_two = (list(csv.DictReader((d / "r.csv").open())) for d in (single, multi))
    names = sorted(p.relative_to(gt).with_suffix("").as_posix() for p in gt.rglob("*.png"))
    assert [r["image"] for r in rows_two] == [r["image"] for r in rows_one] == [n for n in names if n != "im4"]
    for row_one, row_two in zip(rows_one, rows_two, strict=True):
        assert row_two.keys() == row_one.keys() and row_two["gt_path"] == row_one["gt_path"]
        for key in row_one.keys() - {"image", "gt_path"}:
            assert float(row_two[key]) == pytest.approx(float(row_one[key]), rel=1e-12), (row_one["image"], key)
