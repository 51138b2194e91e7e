"""Training on 000 Eq.4's masked condition: `condition_mask_probability` of train_unet.py masks z_c to random
ellipses, as segmentation guidance masks it to an instance at inference."""

import numpy as np
import pytest
import torch
from PIL import Image

from colordiff.config import ConfigError, load_config
from colordiff.training.unet import TrainUNetConfig, random_condition_masks


def test_masks_are_whole_or_one_nonempty_ellipse():
    torch.manual_seed(0)
    masks = random_condition_masks(4000, (16, 12), 0.3, "cpu")  # (B, 1, h, w)
    assert masks.shape == (4000, 1, 16, 12) and set(masks.unique().tolist()) <= {0.0, 1.0}
    whole = masks.flatten(1).all(1)
    assert abs(whole.float().mean().item() - 0.7) < 0.03  # binomial sd 0.007
    area = masks[~whole].flatten(1).mean(1)  # share of the grid each ellipse covers
    assert area.min() > 0 and area.max() < 0.75 and 0.1 < area.mean() < 0.3
    assert random_condition_masks(64, (8, 8), 0.0, "cpu").eq(1).all()
    assert not random_condition_masks(64, (8, 8), 1.0, "cpu").flatten(1).all(1).any()


def test_probability_outside_zero_one_is_a_config_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("condition_mask_probability: 1.5\n")
    with pytest.raises(ConfigError, match=r"condition_mask_probability must be in \[0, 1\], got 1.5"):
        load_config(TrainUNetConfig, [path])


def _data(root):
    yy, xx = np.mgrid[0:64, 0:64] / 64
    for i in range(4):
        rgb = np.stack([np.sin(xx * 3 + i), np.cos(yy * 2 + i), xx * yy], -1) * 0.5 + 0.5
        Image.fromarray((rgb * 255).astype(np.uint8)).save(root / f"{i}.png")
    return root


def test_training_sees_the_condition_masked(tmp_path, tiny_model_dir, fresh_accelerate, monkeypatch):
    import colordiff.training.unet as unet_module

    seen = []
    original = unet_module.diffusion_loss

    def spy(unet, scheduler, latents, condition_latents, *rest):
        seen.append(condition_latents.detach().clone())
        return original(unet, scheduler, latents, condition_latents, *rest)

    monkeypatch.setattr(unet_module, "diffusion_loss", spy)
    data = _data(tmp_path)
    for probability in (0.0, 1.0):
        unet_module.main(TrainUNetConfig(
            pretrained_model_name_or_path=str(tiny_model_dir), output_dir=str(tmp_path / f"out{probability}"),
            train_data_dir=str(data), text_source="empty", resolution=64, train_batch_size=4, max_train_steps=1,
            random_flip=False, center_crop=True, mixed_precision="no", checkpointing_steps=10, validation_images=[],
            report_to="none", condition_mask_probability=probability))
    whole, masked = seen  # (4, 4, h, w) each: the same photos and crops, hence the same z_c before masking
    assert whole.ne(0).flatten(1).all(1).all()
    kept = masked.ne(0)
    assert torch.equal(masked[kept], whole[kept])  # inside its ellipse an example keeps its own z_c
    zero_cells = masked.eq(0).all(1).flatten(1).float().mean(1)  # (4,): share of cells zeroed on every channel
    assert (zero_cells > 0.25).all() and (zero_cells < 1).all()
