"""ColorDiff's model components: Eq.1 concat U-Net and Eq.6 luminance-aware VAE."""

import pytest
import torch

from colordiff.models import ConcatUNet2DConditionModel, LuminanceAwareAutoencoderKL
from colordiff.testing import TINY_TEXT_DIM, tiny_unet, tiny_vae


def _unet_inputs(batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    z_t = torch.randn(batch, 4, 8, 8, generator=g)
    z_c = torch.randn(batch, 4, 8, 8, generator=g)
    text = torch.randn(batch, 77, TINY_TEXT_DIM, generator=g)
    t = torch.tensor([10, 900])[:batch]
    return z_t, z_c, text, t


def test_concat_unet_at_init_is_exactly_sd_unet():
    sd = tiny_unet().eval()
    ours = ConcatUNet2DConditionModel.from_unet(sd).eval()
    z_t, z_c, text, t = _unet_inputs()
    with torch.no_grad():
        expected = sd(z_t, t, text).sample
        got = ours(z_t, t, text, condition_latents=z_c).sample
    assert torch.equal(got, expected)  # identity on z_t, zero on z_c: bit-identical, not just close


def test_concat_unet_uses_condition_once_fuse_is_trained():
    ours = ConcatUNet2DConditionModel.from_unet(tiny_unet()).eval()
    with torch.no_grad():
        ours.condition_fuse.weight[:, 4:] = 0.1
    z_t, z_c, text, t = _unet_inputs()
    with torch.no_grad():
        a = ours(z_t, t, text, condition_latents=z_c).sample
        b = ours(z_t, t, text, condition_latents=torch.zeros_like(z_c)).sample
    assert (a - b).abs().max() > 1e-3


def test_concat_unet_fuse_is_eq1_conv1x1_of_concat():
    ours = ConcatUNet2DConditionModel.from_unet(tiny_unet())
    assert ours.condition_fuse.kernel_size == (1, 1)
    assert ours.condition_fuse.in_channels == 8 and ours.condition_fuse.out_channels == 4
    w = ours.condition_fuse.weight[:, :, 0, 0]
    assert torch.equal(w[:, :4], torch.eye(4)) and torch.equal(w[:, 4:], torch.zeros(4, 4))


def test_concat_unet_save_load_roundtrip(tmp_path):
    ours = ConcatUNet2DConditionModel.from_unet(tiny_unet()).eval()
    with torch.no_grad():
        ours.condition_fuse.weight.normal_()
    ours.save_pretrained(tmp_path / "unet")
    files = {p.name for p in (tmp_path / "unet").iterdir()}
    assert "diffusion_pytorch_model.safetensors" in files and not any(f.endswith(".bin") for f in files)
    loaded = ConcatUNet2DConditionModel.from_pretrained(tmp_path / "unet").eval()
    assert loaded.config.condition_channels == 4
    assert tuple(loaded.config.block_out_channels) == (32, 64)
    z_t, z_c, text, t = _unet_inputs()
    with torch.no_grad():
        assert torch.equal(ours(z_t, t, text, condition_latents=z_c).sample,
                           loaded(z_t, t, text, condition_latents=z_c).sample)


def test_concat_unet_rejects_mismatched_condition():
    ours = ConcatUNet2DConditionModel.from_unet(tiny_unet())
    z_t, z_c, text, t = _unet_inputs()
    with pytest.raises(ValueError, match="condition_latents"):
        ours(z_t, t, text, condition_latents=z_c[:, :, :4])


def _image(batch=2, size=64, seed=0):
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_luminance_vae_at_init_is_exactly_sd_vae():
    sd = tiny_vae().eval()
    ours = LuminanceAwareAutoencoderKL.from_vae(sd).eval()
    x = _image()
    with torch.no_grad():
        posterior, features = ours.encode_with_features(x)
        assert torch.equal(posterior.mean, sd.encode(x).latent_dist.mean)
        z = posterior.mode()
        assert torch.equal(ours.decode_with_features(z, features), sd.decode(z).sample)


def test_luminance_vae_skip_features_match_eq6_resolutions():
    ours = LuminanceAwareAutoencoderKL.from_vae(tiny_vae())
    with torch.no_grad():
        _, features = ours.encode_with_features(_image(size=64))
    channels = ours.config.block_out_channels
    assert [tuple(f.shape) for f in features] == [(2, channels[i], 64 // 2**i, 64 // 2**i) for i in range(3)]
    # each skip conv maps encoder level i onto the input channels of decoder up-block n-1-i
    for i, conv in enumerate(ours.luminance_skips):
        assert (conv.in_channels, conv.out_channels) == (channels[i], channels[i + 1])


def test_luminance_vae_skips_change_output_once_alphas_move(tmp_path):
    ours = LuminanceAwareAutoencoderKL.from_vae(tiny_vae()).eval()
    x = _image()
    with torch.no_grad():
        posterior, features = ours.encode_with_features(x)
        z = posterior.mode()
        before = ours.decode_with_features(z, features)
        ours.luminance_alphas.fill_(0.5)
        after = ours.decode_with_features(z, features)
        other_gray = ours.decode_with_features(z, [torch.zeros_like(f) for f in features])
    assert (after - before).abs().max() > 1e-3
    assert (after - other_gray).abs().max() > 1e-3
    ours.save_pretrained(tmp_path / "vae")
    loaded = LuminanceAwareAutoencoderKL.from_pretrained(tmp_path / "vae").eval()
    assert loaded.config.luminance_skip_levels == 3
    with torch.no_grad():
        assert torch.equal(loaded.decode_with_features(z, features), after)


def test_luminance_alphas_get_gradient_at_init():
    ours = LuminanceAwareAutoencoderKL.from_vae(tiny_vae())
    posterior, features = ours.encode_with_features(_image())
    ours.decode_with_features(posterior.mode().detach(), [f.detach() for f in features]).square().mean().backward()
    assert ours.luminance_alphas.grad is not None and ours.luminance_alphas.grad.abs().min() > 0


def test_luminance_vae_rejects_too_many_levels():
    config = {k: v for k, v in tiny_vae().config.items() if not k.startswith("_")}
    with pytest.raises(ValueError, match="luminance_skip_levels=4"):
        LuminanceAwareAutoencoderKL.from_config({**config, "luminance_skip_levels": 4})
