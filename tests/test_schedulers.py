"""Any diffusers scheduler drives the sampler; DDIM stays the default and gives the results it always gave."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from colordiff.cli import main
from colordiff.pipelines import load_pipeline
from colordiff.schedulers import SCHEDULERS, check_prediction_type, make_scheduler, scheduler_name
from colordiff.testing import tiny_colordiff_pipeline, tiny_seada_pipeline

sys.path.insert(0, str(Path(__file__).parent / "data"))
import make_ddim_reference as reference  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
STOCHASTIC = ["euler_a", "ddpm", "lcm", "tcd"]


@pytest.fixture(scope="module")
def saved():
    return load_file(Path(__file__).parent / "data" / "ddim_reference.safetensors")


def test_ddim_gives_the_outputs_saved_before_other_schedulers_existed(saved):
    """The same up to float rounding: CPUs with other vector units (AVX2, AVX-512, AMX) round the tiny models' matmuls
    differently, about 2e-6 here; another sampler or a changed step moves these outputs by more than 1e-3."""
    now = reference.outputs()
    for name in ("colordiff_0", "colordiff_1", "seada_0", "seada_1", "colordiff_seg_0", "colordiff_seg_1"):
        torch.testing.assert_close(now[name], saved[name], rtol=0, atol=1e-5, msg=name)


def _colorize(pipe, images=None, seeds=(1, 2), steps=4, priors="none", prompts=None, **kwargs):
    images = images if images is not None else reference.inputs()[0]
    pipe.set_progress_bar_config(disable=True)
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    return pipe(images, prompt=prompts or reference.PROMPTS[: len(images)], num_inference_steps=steps,
                generator=generators, resolution=64, output_type="pt", priors=priors, **kwargs).images


@pytest.mark.parametrize("make", [tiny_colordiff_pipeline, tiny_seada_pipeline])
def test_an_assigned_scheduler_is_the_one_that_steps(make, monkeypatch):
    from diffusers import DPMSolverMultistepScheduler

    pipe = make()
    ddim = _colorize(pipe)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    calls = []
    original = DPMSolverMultistepScheduler.step
    monkeypatch.setattr(DPMSolverMultistepScheduler, "step", lambda self, *a, **k: calls.append(1) or original(
        self, *a, **k))
    dpm = _colorize(pipe)
    assert len(calls) == 2 * 4  # its own step (on a private copy): 4 steps for each of two working sizes
    assert all((a - b).abs().max() > 1e-3 for a, b in zip(dpm, ddim, strict=True))


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_every_named_scheduler_colorizes(name):
    pipe = tiny_colordiff_pipeline()
    pipe.scheduler = make_scheduler(name, pipe.scheduler.config)
    out = _colorize(pipe)
    assert [tuple(o.shape) for o in out] == [(3, 48, 64), (3, 64, 40)]
    assert all(torch.isfinite(o).all() and o.std() > 0 for o in out)


@pytest.mark.parametrize("name", STOCHASTIC)
def test_a_stochastic_sampler_draws_each_images_noise_from_its_own_seed(name):
    pipe = tiny_colordiff_pipeline()
    pipe.scheduler = make_scheduler(name, pipe.scheduler.config)
    first = reference.inputs()[0][0]
    images = [first, np.ascontiguousarray(first[::-1])]  # one working size: one batch
    together = _colorize(pipe, images, seeds=(1, 2))
    alone = _colorize(pipe, images[1:], seeds=(2,), prompts=reference.PROMPTS[1:])
    torch.testing.assert_close(together[1], alone[0], rtol=0, atol=1e-5)  # batch-independent
    other = _colorize(pipe, images[1:], seeds=(3,), prompts=reference.PROMPTS[1:])
    assert (other[0] - alone[0]).abs().max() > 1e-4  # and the noise really depends on the seed


def test_segmentation_guidance_works_with_a_multistep_solver():
    pipe = tiny_colordiff_pipeline()
    pipe.scheduler = make_scheduler("dpmpp_2m", pipe.scheduler.config)
    images, priors = reference.inputs()
    plain = _colorize(pipe, images)
    guided = _colorize(pipe, images, priors=priors, seg_strength=0.5)
    assert (guided[0] - plain[0]).abs().max() > 1e-3  # the image with instances changes
    torch.testing.assert_close(guided[1], plain[1], rtol=0, atol=1e-5)  # the one without does not


def test_names_and_unknown_names():
    config = tiny_colordiff_pipeline().scheduler.config
    assert [scheduler_name(make_scheduler(n, config)) for n in SCHEDULERS] == list(SCHEDULERS)
    assert make_scheduler("dpmpp_2m_karras", config).config.use_karras_sigmas
    with pytest.raises(ValueError, match="unknown scheduler 'heun'; known: ddim, dpmpp_2m"):
        make_scheduler("heun", config)


def test_the_scheduler_keeps_the_training_schedule():
    pipe = tiny_colordiff_pipeline()
    zero_snr = pipe.scheduler.from_config(pipe.scheduler.config, rescale_betas_zero_snr=True,
                                          prediction_type="v_prediction", timestep_spacing="trailing")
    for name in ("dpmpp_2m", "unipc", "euler", "lcm"):
        made = make_scheduler(name, zero_snr.config)
        assert made.config.prediction_type == "v_prediction" and made.config.timestep_spacing == "trailing"
        assert made.config.rescale_betas_zero_snr


def test_a_scheduler_for_another_prediction_type_is_refused():
    pipe = tiny_colordiff_pipeline()
    pipe.unet.register_to_config(prediction_type="v_prediction")
    with pytest.raises(ValueError, match="trained for prediction_type 'v_prediction'"):
        _colorize(pipe)
    pipe.scheduler = make_scheduler("unipc", {**pipe.scheduler.config, "prediction_type": "v_prediction"})
    check_prediction_type(pipe.unet, pipe.scheduler)  # matching: fine
    assert all(torch.isfinite(o).all() for o in _colorize(pipe))


def test_a_model_folders_saved_scheduler_is_the_default(tmp_path):
    pipe = tiny_colordiff_pipeline()
    pipe.scheduler = make_scheduler("unipc", pipe.scheduler.config)
    pipe.save_pretrained(tmp_path / "model")
    loaded = load_pipeline(tmp_path / "model")
    assert scheduler_name(loaded.scheduler) == "unipc"
    torch.testing.assert_close(_colorize(loaded)[0], _colorize(pipe)[0], rtol=0, atol=1e-6)


def test_a_distilled_unet_gets_the_guidance_scale_as_input_and_one_branch(monkeypatch):
    from diffusers import UNet2DConditionModel

    from colordiff.models import ConcatUNet2DConditionModel

    pipe = tiny_colordiff_pipeline()
    config = {k: v for k, v in pipe.unet.config.items() if not k.startswith("_")}
    student = ConcatUNet2DConditionModel.from_config({**config, "time_cond_proj_dim": 16})
    student.load_state_dict(pipe.unet.state_dict(), strict=False)
    pipe.unet = student
    pipe.scheduler = make_scheduler("lcm", pipe.scheduler.config)
    seen = []
    original = UNet2DConditionModel.forward

    def spy(self, sample, timestep, encoder_hidden_states, *args, timestep_cond=None, **kwargs):
        seen.append((sample.shape[0], None if timestep_cond is None else timestep_cond.clone()))
        return original(self, sample, timestep, encoder_hidden_states, *args, timestep_cond=timestep_cond, **kwargs)

    monkeypatch.setattr(UNet2DConditionModel, "forward", spy)
    a = _colorize(pipe, guidance_scale=8.0)
    assert [batch for batch, _ in seen] == [1] * 8  # one row per image (two working sizes): no CFG branch
    assert seen[0][1].shape == (1, 16)
    high = seen[0][1]
    seen.clear()
    b = _colorize(pipe, guidance_scale=2.0)
    assert not torch.equal(seen[0][1], high)  # the scale is the input
    assert all(torch.isfinite(x).all() for x in a + b)


def test_cli_scheduler_flag_and_sidecar(tmp_path, tiny_model_dir, capsys):
    from PIL import Image

    image = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "out"
    args = ["colorize", str(image), "-o", str(out), "--model", str(tiny_model_dir), "--steps", "3", "--resolution",
            "64", "--save-priors"]
    assert main([*args, "--scheduler", "dpmpp_2m"]) == 0
    sidecar = json.loads((out / "in.priors.json").read_text())
    assert sidecar["scheduler"] == "dpmpp_2m" and sidecar["steps"] == 3
    capsys.readouterr()
    assert main([*args, "--scheduler", "heun", "--overwrite"]) == 2
    assert "heun" in capsys.readouterr().err
    assert main([*args, "scheduler=heun", "--overwrite"]) == 2  # the YAML key is checked the same way
    assert "must be one of ddim, dpmpp_2m" in capsys.readouterr().err
