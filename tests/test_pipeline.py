"""ColorDiffPipeline: sizes, luminance, batch independence, save/load, building from SD weights."""

import numpy as np
import pytest
import torch

from colordiff.color import rgb_to_lab
from colordiff.images import working_size
from colordiff.pipelines import ColorDiffPipeline, load_pipeline
from colordiff.testing import save_tiny_stable_diffusion, tiny_colordiff_pipeline, tiny_stable_diffusion


@pytest.fixture(scope="module")
def pipe():
    pipe = tiny_colordiff_pipeline()
    with torch.no_grad():  # a "trained" model: the gray condition and the decoder skips matter
        pipe.unet.condition_fuse.weight[:, 4:] = 0.3
        pipe.vae.luminance_alphas.fill_(0.5)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _images(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.random((40, 70, 3), dtype=np.float32), rng.random((64, 64, 3), dtype=np.float32),
            rng.random((90, 30, 3), dtype=np.float32)]


def _gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def _run(pipe, images, seeds, **kwargs):
    kwargs = {"num_inference_steps": 3, "resolution": 64, "output_type": "np", **kwargs}
    return pipe(images, generator=_gens(*seeds), **kwargs).images


def _L(array):
    return rgb_to_lab(torch.from_numpy(array).permute(2, 0, 1).double())[0]


def test_working_size_keeps_aspect_and_multiples():
    assert working_size(512, 512, 512, 64) == (512, 512)
    assert working_size(512, 768, 512, 64) == (448, 640)  # 418 x 627 at area 512^2, each side to the nearest 64
    assert working_size(3000, 100, 512, 64) == (2816, 64)  # a thin strip stays at least one multiple wide
    h, w = working_size(1080, 1920, 512, 64)
    assert h % 64 == w % 64 == 0 and abs(h * w / 512**2 - 1) < 0.15 and abs(w / h - 16 / 9) < 0.2


def test_outputs_have_input_sizes_and_input_luminance(pipe):
    images = _images()
    out = _run(pipe, images, [0, 1, 2])
    assert [o.shape for o in out] == [im.shape for im in images]
    for image, result in zip(images, out, strict=True):
        assert result.min() >= 0 and result.max() <= 1
        np.testing.assert_allclose(_L(result), _L(image), atol=2e-3)  # the input's exact L, everywhere
        assert np.abs(result - result.mean(axis=2, keepdims=True)).max() > 0.01  # it is not just gray


def test_without_keep_luminance_the_decoder_output_is_used(pipe):
    image = _images()[:1]
    kept = _run(pipe, image, [0])[0]
    raw = _run(pipe, image, [0], keep_luminance=False)[0]
    assert raw.shape == kept.shape
    assert np.abs(_L(raw) - _L(image[0])).max() > 1.0


def test_result_is_independent_of_batch_and_order(pipe):
    images = _images()
    batch = _run(pipe, images, [10, 11, 12])
    alone = _run(pipe, images[1:2], [11])[0]
    reversed_batch = _run(pipe, images[::-1], [12, 11, 10])
    np.testing.assert_allclose(batch[1], alone, atol=1e-5)
    for a, b in zip(batch, reversed_batch[::-1], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    other_seed = _run(pipe, images[1:2], [99])[0]
    assert np.abs(other_seed - alone).max() > 1e-3


def test_no_prompt_is_the_empty_prompt_and_a_prompt_conditions_with_and_without_guidance(pipe):
    image = _images()[:1]
    plain = _run(pipe, image, [0], prompt=None)
    empty = _run(pipe, image, [0], prompt="")
    texted = _run(pipe, image, [0], prompt="a red apple", guidance_scale=7.5)
    np.testing.assert_array_equal(plain[0], empty[0])
    assert np.abs(texted[0] - plain[0]).max() > 1e-3
    # guidance off (w <= 1, diffusers' rule): one branch, the conditional one, so the prompt still conditions it
    unguided = _run(pipe, image, [0], prompt="", guidance_scale=1.0)
    unguided_texted = _run(pipe, image, [0], prompt="a red apple", guidance_scale=1.0)
    np.testing.assert_array_equal(unguided[0], plain[0])  # "" = the negative prompt: both branches were equal anyway
    assert np.abs(unguided_texted[0] - unguided[0]).max() > 1e-3
    assert np.abs(unguided_texted[0] - texted[0]).max() > 1e-3  # guidance scales the prompt's effect


def test_accepts_pil_and_grayscale_inputs(pipe):
    from PIL import Image

    gray = (np.random.default_rng(3).random((48, 48)) * 255).astype(np.uint8)
    out = pipe([Image.fromarray(gray), gray], generator=_gens(0, 0), num_inference_steps=2, resolution=64).images
    assert [o.size for o in out] == [(48, 48), (48, 48)]
    np.testing.assert_array_equal(np.asarray(out[0]), np.asarray(out[1]))


def test_save_load_roundtrip_is_exact(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "model")
    assert not list((tmp_path / "model").rglob("*.bin"))
    loaded = load_pipeline(tmp_path / "model")
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded) is ColorDiffPipeline
    images = _images()[:2]
    for a, b in zip(_run(pipe, images, [4, 5]), _run(loaded, images, [4, 5]), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_from_stable_diffusion_folder_is_identity_initialised(tmp_path):
    base = save_tiny_stable_diffusion(tmp_path / "sd15")
    pipe = ColorDiffPipeline.from_stable_diffusion(base, local_files_only=True)
    sd = tiny_stable_diffusion()
    unet_state = pipe.unet.state_dict()
    for key, value in sd.unet.state_dict().items():
        assert torch.equal(unet_state[key], value), key
    assert torch.equal(pipe.vae.luminance_alphas, torch.zeros(3))
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert pipe.scheduler.config.steps_offset == 1 and pipe.scheduler.config.beta_schedule == "scaled_linear"


def test_clear_errors_for_bad_arguments(pipe):
    with pytest.raises(ValueError, match="2 prompts for 3 images"):
        pipe(_images(), prompt=["a", "b"])
    with pytest.raises(ValueError, match="shape"):
        pipe([np.zeros((8, 8, 4), np.float32)])
