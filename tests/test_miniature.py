"""The miniature (scripts/miniature.py) end to end at smoke size: a handful of generated photos, a few steps per
phase, every phase through the real scripts; the table must equal the evaluation JSONs, and a re-run reuses it all."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from colordiff.mini.base import MiniBaseConfig, build_vae, latent_statistics, normalise_latents
from colordiff.mini.report import METRICS, ROWS, WORLD_ROWS

REPO = Path(__file__).resolve().parents[1]

SMOKE = """
heldout: [photo0, photo5]
heldout_every: 0
mean_samples: 2
test_captions: ""
image_size: 32
base_overrides: ["vae_channels=[32,32]", vae_steps=4, vae_batch_size=4, vae_crop=16, "unet_channels=[32,32]",
                 "unet_cross_attention=null",
                 unet_pretrain_steps=2, unet_crop=16, unet_batch_size=2]
train_overrides: [max_train_steps=2, train_batch_size=2, resolution=16, checkpointing_steps=2]
colorize_overrides: [steps=2, resolution=32]
"""


def make_photos(folder: Path, count: int = 8, seed: int = 0) -> None:
    """`count` smooth color images (landscape and portrait) and one gray one, which the miniature must leave out."""
    rng = np.random.default_rng(seed)
    folder.mkdir()
    for i in range(count):
        h, w = (40, 56) if i % 2 else (56, 40)
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        base = rng.uniform(0.2, 0.8, 3)
        img = np.stack([base[c] + 0.3 * np.sin(3 * xx * (c + 1) + rng.uniform(0, 6)) * np.cos(2 * yy + c)
                        for c in range(3)], -1)
        Image.fromarray((img.clip(0, 1) * 255).astype(np.uint8)).save(folder / f"photo{i}.png")
    Image.fromarray(np.full((40, 40), 128, np.uint8)).convert("RGB").save(folder / "gray.png")


@pytest.mark.slow
def test_miniature_smoke_run_table_equals_evaluations_and_resumes(tmp_path):
    photos, work, test = tmp_path / "photos", tmp_path / "mini", tmp_path / "test"
    make_photos(photos)
    make_photos(test, count=2, seed=1)  # the second test set: two color photos (and a gray one, screened out)
    captions = tmp_path / "captions.jsonl"
    captions.write_text("".join(json.dumps({"path": f"photo{i}.png", "caption_gray": f"a photo {i}",
                                            "caption_color": f"a colorful photo {i}"}) + "\n" for i in range(8)))
    (tmp_path / "smoke.yaml").write_text(SMOKE)
    command = [sys.executable, str(REPO / "scripts" / "miniature.py"), "--config", str(REPO / "configs/mini/lab.yaml"),
               "--config", str(tmp_path / "smoke.yaml"), f"data_dir={photos}", f"work_dir={work}",
               f"captions={captions}", f"test_dir={test}"]
    first = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-3000:]

    summary = json.loads((work / "table.json").read_text())
    assert sorted(summary["rows"]) == sorted(set(ROWS) - WORLD_ROWS)  # every row of both papers and every baseline
    table = (work / "table.md").read_text()
    for row, values in summary["rows"].items():
        evaluated = json.loads((work / "eval" / f"{row}.json").read_text())
        assert evaluated["n_images"] == 2
        for key in METRICS:
            assert values[key] == evaluated[key], (row, key)
        cells = " | ".join(f"{values[k]:.2f}" for k in ("colorfulness", "delta_cf", "delta_cf_per_image", "psnr",
                                                        "delta_ab", "hue_accuracy"))
        assert f"| {ROWS[row][1]} | {cells} |" in table
    assert summary["rows"]["gray"]["colorfulness"] == 0.0
    for name, result in [("heldout", summary), *summary["test_sets"].items()]:  # every model: mean of 2 samples
        evaluated = work / "eval" if name == "heldout" else work / name / "eval"
        for row in ("untrained", "unet_only", "unet_decoder", "seada_ii", "seada_i_ii", "seada_i_ii_iii"):
            mean = json.loads((evaluated / f"{row}_mean.json").read_text())
            assert mean["config"]["samples"] == 2 and result["rows"][row]["mean_of_samples"]["psnr"] == mean["psnr"]
        assert set(result["gates"]) == set(result["rows"]) and result["gates"]["gray"]["conditional colors"] is False
    assert sorted(summary["test_sets"]["test"]["photos"]) == ["photo0.png", "photo1.png"]
    assert "unet_decoder_prompt" not in summary["test_sets"]["test"]["rows"]  # no captions for that set
    assert "**Second test set `test`**" in table and (work / "test" / "grid.png").is_file()
    assert sorted(summary["heldout"]) == ["photo0.png", "photo5.png"]
    assert sorted(p.name for p in (work / "photos" / "train").glob("*.png")) == \
        [f"photo{i}.png" for i in (1, 2, 3, 4, 6, 7)]  # held-out and gray photos never trained on
    assert set(summary["condition_check"]) == {"eps_loss_own_condition", "eps_loss_other_condition", "ratio"}
    assert [point["step"] for point in summary["learning_curve"]] == [2]  # a point per U-Net checkpoint
    assert "**learning curve**" in table and 0 <= summary["learning_curve"][0]["hue_accuracy"] <= 1

    grid = np.asarray(Image.open(work / "grid.png"))
    heights = [Image.open(work / "photos" / "gt" / name).height for name in summary["heldout"]]
    assert min(heights) == 32 and grid.shape[0] == sum(h + 4 for h in heights)  # a row per photo, with its frame
    columns = (work / "grid.txt").read_text().splitlines()[0].removeprefix("columns: ").split(" | ")
    assert columns == [*(row for row in ROWS if row not in WORLD_ROWS), "ground truth"]

    # frozen parts are exported exactly as loaded (training ran in bf16), so the decoder merges into the U-Net's model
    for model in ("unet/model", "colordiff"):
        vae = load_file(work / model / "vae" / "diffusion_pytorch_model.safetensors")
        init = load_file(work / "colordiff_init" / "vae" / "diffusion_pytorch_model.safetensors")
        encoder = [k for k in init if k.startswith(("encoder.", "quant_conv."))]
        assert encoder and all(torch.equal(vae[k], init[k]) for k in encoder), model
    unet = load_file(work / "seada_stage3/model/unet/diffusion_pytorch_model.safetensors")
    base = load_file(work / "seada_init/unet/diffusion_pytorch_model.safetensors")
    assert all(torch.equal(unet[k], base[k]) for k in base)  # SD's U-Net stays frozen through every SeAda stage

    second = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "done in" not in second.stderr and second.stderr.count("reusing") >= 20
    assert json.loads((work / "table.json").read_text()) == summary


def test_latent_normalisation_is_exact_and_standardises():
    """normalise_latents folds (z - mean) / std into the VAE: the same decoded images, latents of mean 0, std 1."""
    torch.manual_seed(0)
    vae = build_vae(MiniBaseConfig(data_dir="x", vae_channels=[32, 32], vae_crop=16)).eval()
    photos = [torch.rand(3, 24, 32) for _ in range(4)]
    x = torch.stack(photos[:2]) * 2 - 1
    with torch.no_grad():
        before = vae.decode(vae.encode(x).latent_dist.mode()).sample
        mean, std = latent_statistics(vae, photos)
        normalise_latents(vae, mean, std)
        after = vae.decode(vae.encode(x).latent_dist.mode()).sample
        new_mean, new_std = latent_statistics(vae, photos)
    assert not torch.allclose(mean, torch.zeros_like(mean), atol=1e-2)  # there was an offset to remove
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(new_mean, torch.zeros_like(new_mean), atol=1e-5, rtol=0)
    torch.testing.assert_close(new_std, torch.ones_like(new_std), atol=1e-5, rtol=0)
