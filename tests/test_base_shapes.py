"""Bases other than SD1.5's exact shapes, and mixed-precision training details that the miniature exposed: frozen
parts export exactly as loaded, SeAda's adapter output survives accelerate's mixed-precision wrapper, the zoom of
`resize_range`."""

from __future__ import annotations

import random
from types import SimpleNamespace

import torch
from diffusers import AutoencoderKL

from colordiff.data import resize_and_crop
from colordiff.models import LuminanceAwareAutoencoderKL
from colordiff.models.semantic_adapter import SemanticAdapterOutput
from colordiff.testing import tiny_stable_diffusion
from colordiff.training.common import place_frozen, restore_frozen


def three_block_vae() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                         block_out_channels=(8, 16, 16), layers_per_block=1, latent_channels=4, norm_num_groups=8,
                         scaling_factor=1.0)


def test_luminance_skips_default_to_what_the_vae_has():
    assert LuminanceAwareAutoencoderKL.from_vae(tiny_stable_diffusion().vae).config.luminance_skip_levels == 3
    wrapped = LuminanceAwareAutoencoderKL.from_vae(three_block_vae())  # 4x VAE: two skip levels, not an error
    assert wrapped.config.luminance_skip_levels == 2
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        posterior, features = wrapped.encode_with_features(x)
        plain = three_block_vae().decode(posterior.mode()).sample
        ours = wrapped.decode_with_features(posterior.mode(), features)
    torch.testing.assert_close(ours, plain)  # zero alphas: exactly the wrapped VAE's decoder


def test_seada_mapper_downsamples_as_much_as_the_vae():
    from colordiff.pipelines.seada_pipeline import SeAdaPipeline

    sd = tiny_stable_diffusion()
    for vae, factor in ((sd.vae, 8), (three_block_vae(), 4)):
        parts = SimpleNamespace(vae=vae, unet=sd.unet, text_encoder=sd.text_encoder, tokenizer=sd.tokenizer,
                                scheduler=sd.scheduler)
        pipe = SeAdaPipeline.from_stable_diffusion_components(parts, rca_head_dim=8)
        c_f = pipe.control.mapper(torch.rand(2, 3, 64, 96))
        assert c_f.shape == (2, 4, 64 // factor, 96 // factor)


def test_frozen_parts_export_exactly_as_loaded_after_a_bf16_cast():
    module = three_block_vae()
    exact = {k: v.clone() for k, v in module.state_dict().items()}
    kept = {}
    place_frozen(module, "cpu", torch.bfloat16, kept)
    weight = module.encoder.conv_in.weight
    assert weight.dtype == torch.bfloat16 and not torch.equal(weight.float(), exact["encoder.conv_in.weight"])
    restore_frozen(module, kept)
    assert module.dtype == torch.float32
    assert all(torch.equal(module.state_dict()[k], v) for k, v in exact.items())


def test_adapter_output_rebuilds_from_a_mapping():
    """accelerate returns a mixed-precision module's output as type(output)({...}): every field must come back."""
    out = SemanticAdapterOutput(e_r=torch.ones(1, 2, 3), e_g=torch.zeros(1, 2, 3))
    rebuilt = type(out)({k: v for k, v in out.items()})
    assert torch.equal(rebuilt.e_r, out.e_r) and torch.equal(rebuilt.e_g, out.e_g) and rebuilt.e_c is None


def test_resize_range_zooms_before_the_crop():
    rgb = torch.rand(3, 32, 48)
    # shorter side 16 x 2 = 32: the image at its own size, then the central 16 x 16
    crop = resize_and_crop(rgb, 16, random.Random(0), center_crop=True, flip=False, resize_range=(2.0, 2.0))
    torch.testing.assert_close(crop, rgb[:, 8:24, 16:32].clamp(0, 1), atol=1e-5, rtol=0)
    # the default draws nothing: the random stream (crop offsets, flips) is the one it always was
    a, b = random.Random(1), random.Random(1)
    resize_and_crop(rgb, 16, a, center_crop=False, flip=True)
    b.randint(0, 0), b.randint(0, 48 * 16 // 32 - 16), b.random()
    assert a.random() == b.random()
