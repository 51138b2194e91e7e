"""Both pipelines against what a diffusers user types: call arguments, properties, memory options, loading, LoRA."""

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoPipelineForImage2Image, DiffusionPipeline
from diffusers.image_processor import VaeImageProcessor
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from colordiff.images import working_size
from colordiff.pipelines import ColorDiffPipeline, SeAdaPipeline, load_pipeline
from colordiff.semantics.generators import PriorGenerators
from colordiff.semantics.priors import ImagePriors
from colordiff.testing import tiny_colordiff_pipeline, tiny_seada_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")
STEPS = dict(num_inference_steps=3, resolution=64)


def _trained(pipe):
    with torch.no_grad():  # the gray condition and the decoder skips matter
        if isinstance(pipe, ColorDiffPipeline):
            pipe.unet.condition_fuse.weight[:, 4:] = 0.3
            pipe.vae.luminance_alphas.fill_(0.5)
        else:
            for p in pipe.control.parameters():
                p.add_(0.02 * torch.randn_like(p))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipe():
    return _trained(tiny_colordiff_pipeline())


@pytest.fixture(scope="module")
def seada():
    return _trained(tiny_seada_pipeline())


@pytest.fixture(params=["colordiff", "seada"])
def any_pipe(request, pipe, seada):
    return pipe if request.param == "colordiff" else seada


def _images(count=2, size=(48, 64), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.random((*size, 3), dtype=np.float32) for _ in range(count)]


def _gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


# -- call arguments --------------------------------------------------------------------------------------------------
def test_latents_are_the_initial_noise(any_pipe):
    images = _images()
    z = any_pipe(images, generator=_gens(0, 1), output_type="latent", **STEPS).images  # z_0, not the noise
    noise = torch.stack([torch.randn(z.shape[1:], generator=g) for g in _gens(0, 1)])
    given = any_pipe(images, latents=noise, generator=_gens(5, 6), output_type="np", **STEPS).images
    drawn = any_pipe(images, generator=_gens(0, 1), output_type="np", **STEPS).images
    np.testing.assert_allclose(given, drawn, atol=1e-5)  # the same noise, whatever the generators
    other = any_pipe(images, latents=noise + 0.5, output_type="np", **STEPS).images
    assert np.abs(other - drawn).max() > 1e-3
    with pytest.raises(ValueError, match="latents"):
        any_pipe(images, latents=noise[:1], **STEPS)
    with pytest.raises(ValueError, match="working size"):
        any_pipe(images, latents=torch.randn(2, 4, 2, 2), **STEPS)


def test_callback_on_step_end_sees_and_replaces_latents(any_pipe):
    seen = []

    def callback(p, step, t, kwargs):
        seen.append((step, int(t), tuple(kwargs["latents"].shape), kwargs["prompt_embeds"].shape[0]))
        return {"latents": torch.zeros_like(kwargs["latents"])} if step == STEPS["num_inference_steps"] - 1 else kwargs

    out = any_pipe(_images(), generator=_gens(0, 1), output_type="latent", callback_on_step_end=callback,
                   callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"], **STEPS).images
    assert [s[0] for s in seen] == [0, 1, 2] and all(s[3] == 2 for s in seen)
    assert seen[0][1] > seen[-1][1]  # timesteps run down
    assert torch.count_nonzero(out) == 0  # the last step's returned latents are the output
    with pytest.raises(ValueError, match="not available"):
        any_pipe(_images(), callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["noise"], **STEPS)

    def replaces_embeds(p, step, t, kwargs):
        return {"prompt_embeds": kwargs["prompt_embeds"] * 2}

    with pytest.raises(ValueError, match="only 'latents'"):
        any_pipe(_images(), callback_on_step_end=replaces_embeds,
                 callback_on_step_end_tensor_inputs=["prompt_embeds"], **STEPS)


def test_interrupt_ends_sampling_early(any_pipe):
    steps = []

    def stop_after_first(p, step, t, kwargs):
        steps.append(step)
        p._interrupt = True
        return kwargs

    out = any_pipe(_images(1), generator=_gens(0), callback_on_step_end=stop_after_first, output_type="np",
                   num_inference_steps=5, resolution=64).images
    assert steps == [0] and any_pipe.interrupt and out.shape == (1, 48, 64, 3)
    any_pipe(_images(1), generator=_gens(0), **STEPS)
    assert not any_pipe.interrupt  # each call starts uninterrupted


def test_num_images_per_prompt(any_pipe):
    images = _images(2, seed=3)
    out = any_pipe(images, num_images_per_prompt=2, generator=_gens(0, 1, 2, 3), output_type="np", **STEPS).images
    assert out.shape == (4, 48, 64, 3)
    single = any_pipe([images[1]], generator=_gens(3), output_type="np", **STEPS).images
    np.testing.assert_allclose(out[3], single[0], atol=1e-5)  # output j is image j // 2 with generator j
    assert np.abs(out[0] - out[1]).max() > 1e-3  # two samples of one image differ
    with pytest.raises(ValueError, match="4 outputs"):
        any_pipe(images, num_images_per_prompt=2, generator=_gens(0, 1), **STEPS)


def test_eta_reaches_the_sampler(any_pipe):
    images = _images(1)
    base = any_pipe(images, generator=_gens(0), output_type="np", **STEPS).images
    zero = any_pipe(images, generator=_gens(0), eta=0.0, output_type="np", **STEPS).images
    noisy = any_pipe(images, generator=_gens(0), eta=1.0, output_type="np", **STEPS).images
    np.testing.assert_allclose(base, zero, atol=1e-6)  # DDIM's default eta is 0
    assert np.abs(noisy - base).max() > 1e-3


def test_prompt_embeds_equal_the_prompts(pipe):
    images = _images()
    texts = ["a red barn", "blue sky"]
    by_text = pipe(images, prompt=texts, negative_prompt=["", "gray"], generator=_gens(0, 1), output_type="np",
                   **STEPS).images
    embeds = pipe.encode_prompt(texts)
    negative = pipe.encode_prompt(["", "gray"])
    by_embeds = pipe(images, prompt_embeds=embeds, negative_prompt_embeds=negative, generator=_gens(0, 1),
                     output_type="np", **STEPS).images
    np.testing.assert_allclose(by_embeds, by_text, atol=1e-5)
    with pytest.raises(ValueError, match="not both"):
        pipe(images, prompt="x", prompt_embeds=embeds, **STEPS)


def test_seada_prompt_embeds_are_the_refined_embeddings(seada):
    images = _images()
    by_text = seada(images, prompt=["a cat", "a dog"], generator=_gens(0, 1), output_type="np", **STEPS).images
    e_r = seada.encode_captions(["a cat", "a dog"])
    by_embeds = seada(images, prompt_embeds=e_r, generator=_gens(0, 1), output_type="np", **STEPS).images
    np.testing.assert_allclose(by_embeds, by_text, atol=1e-5)


def test_latent_output_type(any_pipe):
    z = any_pipe(_images(), generator=_gens(0, 1), output_type="latent", **STEPS).images
    h, w = working_size(48, 64, 64, any_pipe.size_multiple)
    assert isinstance(z, torch.Tensor)
    assert z.shape == (2, 4, h // any_pipe.vae_scale_factor, w // any_pipe.vae_scale_factor)


def test_guidance_at_or_below_one_is_off(any_pipe):
    images = _images(1)
    calls = []
    colordiff = isinstance(any_pipe, ColorDiffPipeline)
    model = any_pipe.unet if colordiff else any_pipe.control  # the control model's forward takes the U-Net first
    hook = model.register_forward_hook(lambda m, args, out: calls.append(args[0 if colordiff else 1].shape[0]))
    try:
        for scale in (0.0, 0.5, 1.0):
            calls.clear()
            any_pipe(images, prompt="a red barn", guidance_scale=scale, generator=_gens(0), **STEPS)
            assert set(calls) == {1}, scale  # one branch per step: no classifier-free guidance
            assert not any_pipe.do_classifier_free_guidance and any_pipe.guidance_scale == scale
        calls.clear()
        any_pipe(images, prompt="a red barn", guidance_scale=3.0, generator=_gens(0), **STEPS)
        assert set(calls) == {2} and any_pipe.do_classifier_free_guidance
    finally:
        hook.remove()


def test_negative_prompt_list_is_per_image(any_pipe):
    images = _images(2, seed=4)
    kwargs = dict(prompt="a red barn", guidance_scale=4.0, output_type="np", **STEPS)
    pair = any_pipe(images, negative_prompt=["green", "blurry"], generator=_gens(0, 1), **kwargs).images
    first = any_pipe(images[:1], negative_prompt="green", generator=_gens(0), **kwargs).images
    second = any_pipe(images[1:], negative_prompt="blurry", generator=_gens(1), **kwargs).images
    np.testing.assert_allclose(pair[0], first[0], atol=1e-5)
    np.testing.assert_allclose(pair[1], second[0], atol=1e-5)
    with pytest.raises(ValueError, match="3 negative prompts for 2 images"):
        any_pipe(images, negative_prompt=["a", "b", "c"], **kwargs)


def test_batched_tensor_and_array_inputs(any_pipe):
    images = _images(2, seed=5)
    as_list = any_pipe(images, generator=_gens(0, 1), output_type="np", **STEPS).images
    array = any_pipe(np.stack(images), generator=_gens(0, 1), output_type="np", **STEPS).images  # (B, H, W, 3)
    tensor = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)  # (B, 3, H, W)
    by_tensor = any_pipe(image=tensor, generator=_gens(0, 1), output_type="pt", **STEPS).images
    np.testing.assert_allclose(array, as_list, atol=1e-6)
    assert by_tensor.shape == (2, 3, 48, 64)
    np.testing.assert_allclose(by_tensor.permute(0, 2, 3, 1).numpy(), as_list, atol=1e-5)
    with pytest.raises(ValueError, match="not both"):
        any_pipe(images, image=images, **STEPS)


def test_np_and_pt_outputs_stack_only_when_sizes_agree(pipe):
    same = pipe(_images(2), generator=_gens(0, 1), output_type="np", **STEPS).images
    assert isinstance(same, np.ndarray) and same.shape == (2, 48, 64, 3)
    mixed = pipe([*_images(1), *_images(1, size=(40, 40))], generator=_gens(0, 1), output_type="pt", **STEPS).images
    assert isinstance(mixed, list) and [tuple(m.shape) for m in mixed] == [(3, 48, 64), (3, 40, 40)]


def test_diffusers_properties(any_pipe):
    assert any_pipe.vae_scale_factor == 2 ** (len(any_pipe.vae.config.block_out_channels) - 1)
    assert isinstance(any_pipe.image_processor, VaeImageProcessor)
    assert any_pipe.image_processor.config.vae_scale_factor == any_pipe.vae_scale_factor
    any_pipe(_images(1), generator=_gens(0), num_inference_steps=4, resolution=64)
    assert any_pipe.num_timesteps == 4 and any_pipe.guidance_scale == 7.5
    assert "latents" in any_pipe._callback_tensor_inputs


# -- memory options --------------------------------------------------------------------------------------------------
def test_stable_diffusion_mixin_methods(any_pipe):
    for name in ("enable_vae_slicing", "disable_vae_slicing", "enable_vae_tiling", "disable_vae_tiling",
                 "enable_freeu", "disable_freeu", "fuse_qkv_projections", "unfuse_qkv_projections"):
        assert callable(getattr(any_pipe, name)), name
    any_pipe.enable_vae_slicing()
    assert any_pipe.vae.use_slicing
    any_pipe.disable_vae_slicing()
    any_pipe.enable_vae_tiling()
    assert any_pipe.vae.use_tiling
    any_pipe.disable_vae_tiling()


def test_freeu_changes_and_restores_the_output(pipe):
    images = _images(1)
    plain = pipe(images, generator=_gens(0), output_type="np", **STEPS).images
    pipe.enable_freeu(s1=0.9, s2=0.2, b1=1.5, b2=1.6)
    try:
        free = pipe(images, generator=_gens(0), output_type="np", **STEPS).images
    finally:
        pipe.disable_freeu()
    again = pipe(images, generator=_gens(0), output_type="np", **STEPS).images
    assert np.abs(free - plain).max() > 1e-4
    np.testing.assert_allclose(again, plain, atol=1e-6)


def test_fused_qkv_projections_keep_the_output():
    pipe = _trained(tiny_colordiff_pipeline())
    images = _images(1)
    plain = pipe(images, generator=_gens(0), output_type="np", **STEPS).images
    pipe.fuse_qkv_projections()
    fused = pipe(images, generator=_gens(0), output_type="np", **STEPS).images
    np.testing.assert_allclose(fused, plain, atol=1e-4)


def test_model_cpu_offload_declares_every_model(any_pipe):
    # the accelerator-side behaviour needs a GPU; here: the declared order names exactly the pipeline's models
    models = {name for name, c in any_pipe.components.items() if isinstance(c, torch.nn.Module)}
    assert set(any_pipe.model_cpu_offload_seq.split("->")) == models


# -- loading and publishing ------------------------------------------------------------------------------------------
def test_generic_entry_points_load_a_model_folder(tiny_model_dir):
    for entry in (DiffusionPipeline, AutoPipelineForImage2Image):
        loaded = entry.from_pretrained(tiny_model_dir)
        assert type(loaded) is ColorDiffPipeline, entry


@pytest.mark.slow
def test_generic_entry_point_after_import_colordiff_pipelines_in_a_fresh_process(tiny_model_dir):
    code = ("import colordiff.pipelines\nfrom diffusers import DiffusionPipeline, AutoPipelineForImage2Image\n"
            f"p = DiffusionPipeline.from_pretrained({str(tiny_model_dir)!r})\n"
            f"q = AutoPipelineForImage2Image.from_pretrained({str(tiny_model_dir)!r})\n"
            "print(type(p).__name__, type(q).__name__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["ColorDiffPipeline", "ColorDiffPipeline"]


def _write_priors(tmp_path) -> Path:
    """Tiny caption, category and segmentation generators under tmp/gen, named relative to tmp/gen's YAML."""
    from colordiff.semantics.testing import save_tiny_prior_generators

    save_tiny_prior_generators(tmp_path / "gen")
    return tmp_path / "gen" / "semantic_priors.yaml"


ALL_PRIORS = ("caption", "category", "segmentation")


def test_from_pipe_and_components_keep_the_prior_generators(tmp_path):
    generators = PriorGenerators.from_file(_write_priors(tmp_path))
    pipe = tiny_colordiff_pipeline()
    pipe.prior_generators = generators
    assert ColorDiffPipeline(**pipe.components).prior_generators is generators
    assert ColorDiffPipeline.from_pipe(pipe).prior_generators is generators
    assert ColorDiffPipeline.from_pipe(pipe).resolve_priors("auto") == ALL_PRIORS


def test_save_records_generator_folders_relative_and_copies_them(tmp_path):
    import shutil

    pipe = tiny_colordiff_pipeline()
    pipe.prior_generators = PriorGenerators.from_file(_write_priors(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # nothing outside: no warning
        pipe.save_pretrained(tmp_path / "a")
    recorded = (tmp_path / "a" / "semantic_priors.yaml").read_text()
    assert str(tmp_path) not in recorded and "source: priors/blip" in recorded
    assert (tmp_path / "a" / "priors" / "blip").is_dir()
    shutil.move(tmp_path / "a", tmp_path / "moved")  # the folder works wherever it goes
    shutil.rmtree(tmp_path / "gen")
    moved = ColorDiffPipeline.from_pretrained(tmp_path / "moved")
    assert moved.resolve_priors("auto") == ALL_PRIORS
    assert moved.compute_priors(_images(1), "caption")[0].caption is not None


def test_save_warns_about_generator_folders_outside_the_model(tmp_path):
    source = _write_priors(tmp_path)
    outside = tmp_path / "cfg" / "priors.yaml"  # names the folders by absolute path, from elsewhere
    outside.parent.mkdir()
    outside.write_text(source.read_text().replace("source: priors/", f"source: {tmp_path / 'gen' / 'priors'}/"))
    pipe = tiny_colordiff_pipeline()
    pipe.prior_generators = PriorGenerators.from_file(outside)
    with pytest.warns(UserWarning, match="outside the model folder"):
        pipe.save_pretrained(tmp_path / "a")
    recorded = (tmp_path / "a" / "semantic_priors.yaml").read_text()
    assert str((tmp_path / "gen" / "priors" / "blip").resolve()) in recorded


def test_push_to_hub_uploads_after_everything_is_written(tmp_path, monkeypatch):
    pipe = tiny_colordiff_pipeline()
    pipe.prior_generators = PriorGenerators.from_file(_write_priors(tmp_path))
    uploaded = {}

    def fake_upload(self, folder, repo_id, **kwargs):
        uploaded["files"] = sorted(p.name for p in Path(folder).iterdir())
        uploaded["repo"] = repo_id

    class Repo:
        repo_id = "me/tiny-colordiff"

    monkeypatch.setattr("huggingface_hub.create_repo", lambda *a, **k: Repo())
    monkeypatch.setattr(ColorDiffPipeline, "_upload_folder", fake_upload)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe.save_pretrained(tmp_path / "tiny-colordiff", push_to_hub=True)
    assert uploaded["repo"] == "me/tiny-colordiff"
    assert {"semantic_priors.yaml", "README.md", "model_index.json"} <= set(uploaded["files"])


# -- LoRA ------------------------------------------------------------------------------------------------------------
def _random_lora(model, rank=2):
    model.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                 init_lora_weights=False))
    layers = get_peft_model_state_dict(model)
    model.delete_adapters("default")
    return layers


def test_colordiff_lora_round_trip(tmp_path):
    pipe = _trained(tiny_colordiff_pipeline())
    images = _images(1)
    plain = pipe(images, generator=_gens(0), output_type="np", **STEPS).images
    torch.manual_seed(0)
    ColorDiffPipeline.save_lora_weights(tmp_path / "lora", unet_lora_layers=_random_lora(pipe.unet))
    assert (tmp_path / "lora" / "pytorch_lora_weights.safetensors").is_file()
    pipe.load_lora_weights(tmp_path / "lora", adapter_name="style")
    with_lora = pipe(images, generator=_gens(0), output_type="np", **STEPS).images
    assert np.abs(with_lora - plain).max() > 1e-4
    pipe.set_adapters(["style"], adapter_weights=[0.0])
    np.testing.assert_allclose(pipe(images, generator=_gens(0), output_type="np", **STEPS).images, plain, atol=1e-5)
    pipe.set_adapters(["style"], adapter_weights=[1.0])
    pipe.fuse_lora()
    fused = pipe(images, generator=_gens(0), output_type="np", **STEPS).images
    np.testing.assert_allclose(fused, with_lora, atol=1e-4)


def test_seada_lora_loads_into_unet_and_control(tmp_path):
    pipe = _trained(tiny_seada_pipeline())
    images = _images(1)
    plain = pipe(images, generator=_gens(0), output_type="np", **STEPS).images
    torch.manual_seed(0)
    SeAdaPipeline.save_lora_weights(tmp_path / "lora", unet_lora_layers=_random_lora(pipe.unet),
                                    control_lora_layers=_random_lora(pipe.control))
    pipe.load_lora_weights(tmp_path / "lora")
    assert any("lora" in n for n, _ in pipe.control.named_parameters())
    assert any("lora" in n for n, _ in pipe.unet.named_parameters())
    with_lora = pipe(images, generator=_gens(0), output_type="np", **STEPS).images
    assert np.abs(with_lora - plain).max() > 1e-4
    pipe.fuse_lora()
    np.testing.assert_allclose(pipe(images, generator=_gens(0), output_type="np", **STEPS).images, with_lora,
                               atol=1e-4)


def test_lora_files_must_be_safetensors(tmp_path, pipe):
    (tmp_path / "pytorch_lora_weights.bin").write_bytes(b"not a pickle you want to open")
    with pytest.raises(ValueError, match="safetensors"):
        pipe.load_lora_weights(tmp_path)
    with pytest.raises(ValueError, match="must be a .safetensors file"):
        pipe.load_lora_weights(tmp_path / "pytorch_lora_weights.bin")


def test_precomputed_priors_still_drive_the_prompt(pipe):
    out = pipe(_images(1), priors=[ImagePriors(caption="a red barn")], generator=_gens(0), **STEPS)
    assert out.priors[0].extra["prompt"]


def test_load_pipeline_picks_the_class(tiny_model_dir):
    assert type(load_pipeline(tiny_model_dir)) is ColorDiffPipeline
