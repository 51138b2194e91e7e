"""The mean of N samples (`colordiff evaluate --samples N`) and the two gates of the miniature's table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from colordiff.cli import main
from colordiff.color import lab_to_rgb, rgb_to_lab
from colordiff.errors import UsageError
from colordiff.mini.table import conditional_colors, gate_verdicts, goals, render_rows, right_hues
from colordiff.protocol import mean_of_samples, pair_folders


def lab_image(L: float, a: float, b: float, size: tuple[int, int] = (12, 16)) -> np.ndarray:
    """A uint8 (H, W, 3) image of one Lab color."""
    lab = torch.tensor([L, a, b], dtype=torch.float64)[:, None, None].expand(3, *size)
    return np.rint(lab_to_rgb(lab).permute(1, 2, 0).numpy() * 255).astype(np.uint8)


def lab_of(rgb: np.ndarray) -> np.ndarray:
    return rgb_to_lab(torch.from_numpy(rgb).permute(2, 0, 1).double() / 255).mean((-2, -1)).numpy()


def lab_of_pixels(rgb: np.ndarray) -> np.ndarray:
    return rgb_to_lab(torch.from_numpy(rgb.copy()).permute(2, 0, 1).double() / 255).numpy()  # (3, H, W)


def test_mean_of_two_samples_averages_ab_and_keeps_L():
    first, second = lab_image(55, 20, 0), lab_image(55, -20, 40)
    mean = lab_of(mean_of_samples([first, second]))
    np.testing.assert_allclose(mean[1:], [0, 20], atol=1.0)  # (20 - 20) / 2, (0 + 40) / 2
    assert abs(mean[0] - lab_of(first)[0]) < 0.3  # the samples' L, not a mix of the colors' lightness
    other_L = lab_image(70, -20, 40)  # a second sample with another L: the first sample's L is the one kept
    assert abs(lab_of(mean_of_samples([first, other_L]))[0] - lab_of(first)[0]) < 0.3
    np.testing.assert_array_equal(mean_of_samples([first, first]), first)  # the mean of equal samples is the sample


def _save(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)


def test_evaluate_samples_scores_the_mean_of_n_predictions(tmp_path, capsys):
    truth = lab_image(55, 0, 20)
    for name in ("x", "y"):
        _save(tmp_path / "gt" / f"{name}.png", truth)
        _save(tmp_path / "pred" / f"{name}_0.png", lab_image(55, 20, 0))
        _save(tmp_path / "pred" / f"{name}_1.png", lab_image(55, -20, 40))
        _save(tmp_path / "pred" / f"{name}_2.png", lab_image(55, 90, 90))  # a third sample: unused with N = 2
        _save(tmp_path / "single" / f"{name}.png", lab_image(55, 20, 0))
    args = ["evaluate", "--gt", str(tmp_path / "gt"), "--size", "0", "--metrics", "psnr", "delta_ab"]
    assert main([*args, "--pred", str(tmp_path / "pred"), "--samples", "2"]) == 0
    mean = json.loads(capsys.readouterr().out)
    assert mean["n_images"] == 2 and mean["config"]["samples"] == 2
    assert mean["delta_ab"] < 1.5  # the mean hits the truth's a/b
    assert main([*args, "--pred", str(tmp_path / "single")]) == 0
    single = json.loads(capsys.readouterr().out)
    assert single["delta_ab"] == pytest.approx(np.hypot(20, 20), abs=1.5) and single["psnr"] < 40
    assert mean["psnr"] is None or mean["psnr"] > 40  # the mean equals the truth here (identical images: null = ∞)


def test_sample_pairing_names_missing_samples(tmp_path):
    _save(tmp_path / "gt" / "x.png", lab_image(50, 0, 0))
    _save(tmp_path / "pred" / "x_0.png", lab_image(50, 0, 0))
    with pytest.raises(UsageError, match="1 ground truths have no prediction"):
        pair_folders(tmp_path / "pred", tmp_path / "gt", samples=2)
    _save(tmp_path / "pred" / "x_1.png", lab_image(50, 0, 0))
    [(key, preds, gt)] = pair_folders(tmp_path / "pred", tmp_path / "gt", samples=2)
    assert key == "x" and [p.name for p in preds] == ["x_0.png", "x_1.png"] and gt.name == "x.png"
    _save(tmp_path / "pred" / "stray.png", lab_image(50, 0, 0))
    with pytest.raises(UsageError, match="1 predictions have no ground truth"):
        pair_folders(tmp_path / "pred", tmp_path / "gt", samples=2)


def row(psnr, delta_ab, hue=0.3, cf=20.0, cf_gt=25.0, mean=None):
    out = {"psnr": psnr, "delta_ab": delta_ab, "hue_accuracy": hue, "colorfulness": cf, "colorfulness_gt": cf_gt,
           "delta_cf": 0.0, "delta_cf_per_image": 0.0}
    if mean is not None:
        out["mean_of_samples"] = {"psnr": mean[0], "delta_ab": mean[1]}
    return out


GRAY, FILL = row(21.3, 20.7, hue=0.0, cf=0.0), row(22.1, 18.4, hue=0.32, cf=8.0)


def test_conditional_colors_gate_needs_the_mean_to_beat_gray_and_the_fill_on_both_measures():
    assert conditional_colors({"psnr": 22.5, "delta_ab": 17.0}, GRAY, FILL) is True
    assert conditional_colors({"psnr": 21.75, "delta_ab": 18.6}, GRAY, FILL) is False  # beats gray, not the fill
    assert conditional_colors({"psnr": 22.5, "delta_ab": 18.5}, GRAY, FILL) is False  # PSNR only
    assert conditional_colors(None, GRAY, FILL) is None  # no mean of samples scored


def test_right_hues_gate_needs_hue_accuracy_margin_and_colorfulness_range():
    assert right_hues(row(20, 20, hue=0.43, cf=20, cf_gt=25), FILL) is True  # 0.43 >= 0.32 + 0.1, 0.8x
    assert right_hues(row(20, 20, hue=0.41, cf=20, cf_gt=25), FILL) is False  # margin 0.09
    assert right_hues(row(20, 20, hue=0.6, cf=40, cf_gt=25), FILL) is False  # 1.6x too colorful
    assert right_hues(row(20, 20, hue=0.6, cf=12, cf_gt=25), FILL) is False  # 0.48x too dull
    assert right_hues(row(20, 20, hue=None), FILL) is None


def test_gate_verdicts_per_row_and_the_targets():
    rows = {"gray": GRAY, "mean_chroma": FILL, "vae_ceiling": row(30, 5, hue=0.9, cf=24),
            "unet_only": row(20.9, 19.0, hue=0.23, mean=(21.75, 18.6)),
            "unet_decoder": row(21.5, 18.0, hue=0.5, mean=(22.6, 16.0)),
            "seada_ii": row(20.0, 21.0, hue=0.2)}  # not sampled N times
    gates = gate_verdicts(rows)
    assert gates["gray"] == {"conditional colors": False, "right hues": False}  # it cannot beat itself
    assert gates["mean_chroma"]["conditional colors"] is False
    assert gates["vae_ceiling"] == {"conditional colors": True, "right hues": True}  # deterministic: its own values
    assert gates["unet_only"] == {"conditional colors": False, "right hues": False}
    assert gates["unet_decoder"] == {"conditional colors": True, "right hues": True}
    assert gates["seada_ii"]["conditional colors"] is None
    checks = goals(rows, gates)
    assert checks["unet_decoder passes the conditional colors gate"] is True
    assert checks["decoder row beats U-Net-only row on PSNR"] is True
    assert checks["decoder row beats U-Net-only row on PSNR of the decoded RGB (L not kept)"] is None  # not scored
    assert checks["SeAda I+II+III beats stage II only on PSNR"] is None
    table = "\n".join(render_rows(rows, gates, 8))
    assert "| 22.60 | 16.00 | pass | pass |" in table and "| 21.75 | 18.60 | fail | fail |" in table
    assert "| stage II only |" in table and "| - | - | - | fail |" in table
    rows |= {"unet_only_rgb": row(19.0, 19.0, hue=0.2), "unet_decoder_rgb": row(18.5, 18.0, hue=0.5)}
    rgb_goal = "decoder row beats U-Net-only row on PSNR of the decoded RGB (L not kept)"
    assert goals(rows, gate_verdicts(rows))[rgb_goal] is False  # 18.5 dB against 19.0


def test_decoder_ceiling_row_is_the_vae_ceiling_until_the_skips_act(tmp_path):
    """The luminance-aware decoder's ceiling row (ground truth through the trained decoder, skips fed from the gray)
    equals the plain VAE ceiling while its alphas are zero, and differs once a skip acts."""
    from types import SimpleNamespace

    from colordiff.mini.report import ScoreSet, baseline_predictions
    from colordiff.models.luminance_decoder import LuminanceAwareAutoencoderKL
    from colordiff.testing import tiny_vae

    work = tmp_path / "mini"
    rng = np.random.default_rng(0)
    for folder in ("photos/train", "photos/gt"):
        (work / folder).mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(work / "photos/train/t.png")
    Image.fromarray(rng.integers(0, 256, (20, 28, 3), dtype=np.uint8)).save(work / "photos/gt/a.png")  # not x8
    (work / "eval").mkdir()
    vae = tiny_vae()
    vae.save_pretrained(work / "base" / "vae")
    decoder = LuminanceAwareAutoencoderKL.from_vae(vae)
    decoder.save_pretrained(tmp_path / "zero" / "vae")
    with torch.no_grad():
        decoder.luminance_alphas.fill_(0.5)
    decoder.save_pretrained(tmp_path / "acting" / "vae")
    lab = SimpleNamespace(work=work)

    def ceilings(model: str) -> tuple[np.ndarray, np.ndarray]:
        pred = tmp_path / f"pred_{model}"
        scores = ScoreSet("heldout", work / "photos/gt", work / "photos/gt", pred, work / "eval", None)
        out = baseline_predictions(lab, scores, tmp_path / model)
        return tuple(np.asarray(Image.open(out[row] / "a.png")) for row in ("vae_ceiling", "decoder_ceiling"))

    plain, zero = ceilings("zero")
    assert plain.shape == zero.shape == (20, 28, 3) and np.array_equal(plain, zero)
    plain, acting = ceilings("acting")
    assert np.abs(plain.astype(int) - acting.astype(int)).max() > 10
    truth = lab_of_pixels(np.array(Image.open(work / "photos/gt/a.png")))
    assert np.abs(truth[0] - lab_of_pixels(acting)[0]).max() < 1.0  # the photo's own L is kept, as in every other row
