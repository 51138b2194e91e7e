"""Latent consistency distillation of a tiny ColorDiff model: the student starts as the teacher, the LCM math on
hand-checkable cases, the real script through `accelerate launch`, exact resume (target network included), the
target network's EMA, a LoRA student of a v-prediction teacher, and the distilled folder colorizing."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, LCMScheduler
from PIL import Image
from safetensors.torch import load_file

from colordiff.pipelines import load_pipeline
from colordiff.sampling import guidance_embedding
from colordiff.testing import SD15_SCHEDULER_CONFIG
from colordiff.training.distill import DistillConfig, make_student
from colordiff.training.lcm import ConsistencySchedule, boundary_scalings, consistency_loss

REPO = Path(__file__).resolve().parents[1]
PHOTOS = REPO / "examples" / "photos"
pytestmark = pytest.mark.usefixtures("one_thread")


def _launch(overrides: list[str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--num_processes", "1", str(REPO / "scripts" / "distill.py"),
           "--config", str(REPO / "configs" / "colordiff" / "distill_lcm.yaml"),
           "--config", str(REPO / "configs" / "tiny" / "distill_lcm.yaml"), *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def _weights(path: Path) -> dict:
    return load_file(path)


def _unet_weights(model: Path) -> dict:
    return load_file(model / "unet" / "diffusion_pytorch_model.safetensors")


def _losses(output: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (output / "train_log.jsonl").read_text().splitlines()]


def _unet_inputs(unet, batch: int = 2):
    generator = torch.Generator().manual_seed(0)
    size = unet.config.sample_size
    noisy = torch.randn((batch, 4, size, size), generator=generator)
    condition = torch.randn((batch, 4, size, size), generator=generator)
    text = torch.randn((batch, 77, unet.config.cross_attention_dim), generator=generator)
    return noisy, torch.tensor([999, 19]), text, condition


# -- (1) the student at initialisation -------------------------------------------------------------------------
@pytest.mark.parametrize("lora_rank", [0, 4])
def test_student_starts_as_the_teacher(tiny_model_dir, lora_rank):
    teacher = load_pipeline(tiny_model_dir).unet.eval()
    student = make_student(teacher, DistillConfig(lora_rank=lora_rank)).eval()
    assert student.config.time_cond_proj_dim == 256 and teacher.config.time_cond_proj_dim is None
    assert type(student) is type(teacher)
    assert torch.equal(student.time_embedding.cond_proj.weight, torch.zeros(teacher.time_embedding.linear_1.in_features,
                                                                            256))
    trainable = {name for name, p in student.named_parameters() if p.requires_grad}
    if lora_rank:  # the LoRA on the attention projections and the guidance-scale input, nothing else
        assert "time_embedding.cond_proj.weight" in trainable
        assert all("lora_" in name or name == "time_embedding.cond_proj.weight" for name in trainable)
        assert any(".to_q.lora_A." in name for name in trainable)
    else:
        assert trainable == {name for name, _ in student.named_parameters()}
    noisy, t, text, condition = _unet_inputs(teacher)
    with torch.no_grad():
        expected = teacher(noisy, t, text, condition_latents=condition).sample
        for scale in (3.0, 9.5):
            w = guidance_embedding(torch.full((2,), scale), 256)
            assert torch.equal(student(noisy, t, text, condition_latents=condition, timestep_cond=w).sample, expected)
        torch.nn.init.normal_(student.time_embedding.cond_proj.weight)  # the input is wired: it changes the output
        moved = student(noisy, t, text, condition_latents=condition, timestep_cond=w).sample
    assert not torch.allclose(moved, expected)


# -- (5) the LCM math --------------------------------------------------------------------------------------------
def test_boundary_scalings_and_consistency_function_at_the_boundary():
    c_skip, c_out = boundary_scalings(torch.tensor([0, 1, 19, 999]), timestep_scaling=10.0)
    assert c_skip[0] == 1.0 and c_out[0] == 0.0  # f(z, 0) = z
    # t = 1: (10 t)^2 = 100, sigma_data^2 = 0.25
    assert c_skip[1].item() == pytest.approx(0.25 / 100.25) and c_out[1].item() == pytest.approx(10 / 100.25**0.5)
    lcm = LCMScheduler(**{**SD15_SCHEDULER_CONFIG, "timestep_scaling": 10.0})
    for i, t in enumerate([0, 1, 19, 999]):
        expected = lcm.get_scalings_for_boundary_condition_discrete(t)
        assert (c_skip[i].item(), c_out[i].item()) == pytest.approx(expected, rel=1e-6, abs=1e-12)
    schedule = ConsistencySchedule(SD15_SCHEDULER_CONFIG)
    sample, output = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    assert torch.equal(schedule.consistency(output, torch.tensor([0, 0]), sample), sample)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_solver_step_equals_ddim_scheduler_step(prediction_type):
    config = {**SD15_SCHEDULER_CONFIG, "prediction_type": prediction_type}
    schedule = ConsistencySchedule(config, num_ddim_timesteps=50)
    assert schedule.timesteps.tolist() == list(range(19, 1000, 20))
    lcm = LCMScheduler.from_config(config, original_inference_steps=50)
    lcm.set_timesteps(50)
    assert sorted(lcm.timesteps.tolist()) == schedule.timesteps.tolist()  # the grid the distilled model samples on
    index = torch.arange(50)
    assert schedule.previous_timesteps(index).tolist() == [0, *range(19, 980, 20)]
    # DDIM with "trailing" spacing steps t -> t - 20 on the same grid; below t = 0 it uses alphas_cumprod[0]
    ddim = DDIMScheduler.from_config(config, timestep_spacing="trailing", set_alpha_to_one=False)
    ddim.set_timesteps(50)
    generator = torch.Generator().manual_seed(0)
    for i in (0, 1, 24, 49):
        t = schedule.timesteps[i]
        sample, output = torch.randn((1, 4, 3, 3), generator=generator), torch.randn((1, 4, 3, 3), generator=generator)
        ts = t.view(1)
        ours = schedule.ddim_step(schedule.predicted_original(output, ts, sample),
                                  schedule.predicted_noise(output, ts, sample), index[i].view(1))
        theirs = ddim.step(output, int(t), sample, eta=0.0).prev_sample
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_consistency_loss_and_bad_schedules():
    prediction, target = torch.tensor([0.003, 0.0]), torch.tensor([0.0, 0.0])
    expected = ((0.003**2 + 0.001**2) ** 0.5 - 0.001) / 2  # pseudo-Huber, mean over elements
    assert consistency_loss(prediction, target, "huber", 0.001).item() == pytest.approx(expected)
    assert consistency_loss(prediction, target, "l2").item() == pytest.approx(0.003**2 / 2)
    zero_snr = {**SD15_SCHEDULER_CONFIG, "rescale_betas_zero_snr": True}
    with pytest.raises(ValueError, match="zero terminal SNR"):
        ConsistencySchedule(zero_snr)
    v = ConsistencySchedule({**zero_snr, "prediction_type": "v_prediction"})  # pure noise at t = 999: fine for v
    z, out = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    assert torch.isfinite(v.predicted_original(out, torch.tensor([999]), z)).all()
    with pytest.raises(ValueError, match="num_ddim_timesteps"):
        ConsistencySchedule(SD15_SCHEDULER_CONFIG, num_ddim_timesteps=1001)


# -- (2)-(4) the script through accelerate launch ----------------------------------------------------------------
@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, tiny_model_dir):
    """Four distillation steps in one go (checkpoints every 2), with a validation grid at the end."""
    out = tmp_path_factory.mktemp("distill_straight")
    _launch([f"pretrained_model_name_or_path={tiny_model_dir}", f"output_dir={out}"])
    return out


@pytest.mark.slow
def test_distillation_exports_an_lcm_model(straight_run, tiny_model_dir):
    out = straight_run
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint-2", "checkpoint-4"]
    assert (out / "validation" / "step-0000004.png").is_file() and len(_losses(out)) == 4
    distilled, teacher = load_pipeline(out / "model"), load_pipeline(tiny_model_dir)
    assert type(distilled.scheduler) is LCMScheduler
    assert distilled.scheduler.config.original_inference_steps == 10  # the solver's grid (tiny recipe: N = 10)
    assert distilled.scheduler.config.prediction_type == "epsilon"
    assert distilled.unet.config.time_cond_proj_dim == 256
    for name in ("vae", "text_encoder"):  # frozen parts: bit-identical
        for key, value in getattr(teacher, name).state_dict().items():
            assert torch.equal(getattr(distilled, name).state_dict()[key], value), (name, key)
    student, base = distilled.unet.state_dict(), teacher.unet.state_dict()
    assert set(student) - set(base) == {"time_embedding.cond_proj.weight"}
    assert student["time_embedding.cond_proj.weight"].abs().max() > 0  # the guidance-scale input trained
    assert sum(not torch.equal(student[k], v) for k, v in base.items()) > 10
    # the target network is checkpointed beside the student: an average of the student's path, equal to neither
    online, target = (_weights(out / "checkpoint-4" / f"{name}.safetensors") for name in ("model", "target_unet"))
    assert online.keys() == target.keys() == student.keys()
    key = "condition_fuse.weight"
    assert not torch.equal(target[key], online[key]) and not torch.equal(target[key], base[key])


@pytest.mark.slow
def test_distillation_resume_equals_uninterrupted(straight_run, tmp_path, tiny_model_dir):
    common = [f"pretrained_model_name_or_path={tiny_model_dir}", f"output_dir={tmp_path}", "validation_images=[]"]
    _launch([*common, "max_train_steps=2"])  # "killed" after step 2
    assert (tmp_path / "checkpoint-2").is_dir() and not (tmp_path / "checkpoint-4").exists()
    result = _launch([*common, "max_train_steps=4"])  # resume_from_checkpoint: latest
    assert "resumed from checkpoint-2 at step 2" in result.stdout + result.stderr
    assert _losses(tmp_path) == _losses(straight_run)
    resumed, uninterrupted = _unet_weights(tmp_path / "model"), _unet_weights(straight_run / "model")
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)
    for name in ("model.safetensors", "target_unet.safetensors"):  # the student and the target network
        a, b = _weights(tmp_path / "checkpoint-4" / name), _weights(straight_run / "checkpoint-4" / name)
        assert all(torch.equal(a[k], b[k]) for k in b), name


@pytest.mark.slow
def test_distilled_model_colorizes_in_few_steps_without_cfg(straight_run, tmp_path):
    from colordiff.cli import main

    model = straight_run / "model"
    assert main(["colorize", str(PHOTOS / "kodim05.jpg"), "-o", str(tmp_path / "out"), "--model", str(model),
                 "--steps", "4", "--guidance-scale", "7.5", "--resolution", "64"]) == 0
    assert (tmp_path / "out" / "kodim05.jpg").is_file()
    # the guidance scale is an input of the distilled U-Net: one branch per image, and the scale changes the result
    pipe = load_pipeline(model)
    rows = []
    pipe.unet.register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[0]))
    gray = np.asarray(Image.open(PHOTOS / "kodim05.jpg").convert("L").convert("RGB").resize((64, 64)))
    results = [pipe(gray, prompt="a photo", num_inference_steps=4, guidance_scale=scale, resolution=64,
                    output_type="np", generator=torch.Generator().manual_seed(0)).images[0] for scale in (2.0, 12.0)]
    assert rows == [1] * 8  # 4 LCM steps per call, no unconditional branch
    assert not np.array_equal(results[0], results[1])


# -- in-process runs (the same main() the script calls) ------------------------------------------------------------
def _config(teacher: Path, out: Path, **overrides) -> DistillConfig:
    settings = {"pretrained_model_name_or_path": str(teacher), "output_dir": str(out),
                "train_data_dir": str(PHOTOS), "text_source": "captions",
                "caption_file": str(REPO / "configs" / "tiny" / "seada_captions.jsonl"), "resolution": 64,
                "train_batch_size": 2, "learning_rate": 1e-4, "num_ddim_timesteps": 10, "mixed_precision": "no",
                "checkpointing_steps": 1, "validation_images": [], "report_to": "none", "max_train_steps": 1}
    return DistillConfig(**{**settings, **overrides})


def test_target_network_is_the_ema_of_the_student(tmp_path, tiny_model_dir, fresh_accelerate):
    from colordiff.training.distill import main

    main(_config(tiny_model_dir, tmp_path / "out", target_ema_decay=0.75))
    checkpoint = tmp_path / "out" / "checkpoint-1"
    online, target = (_weights(checkpoint / f"{name}.safetensors") for name in ("model", "target_unet"))
    start = {**_unet_weights(tiny_model_dir), "time_embedding.cond_proj.weight":
             torch.zeros_like(online["time_embedding.cond_proj.weight"])}  # the student at step 0 (= the teacher)
    for key, value in online.items():  # one update: mu = 0.75 mu_0 + 0.25 theta_1
        torch.testing.assert_close(target[key], torch.lerp(start[key], value, 0.25), rtol=0, atol=1e-7)
    assert not torch.equal(target["conv_in.weight"], online["conv_in.weight"])


def test_lora_student_of_a_zero_snr_v_prediction_teacher(tmp_path, tiny_model_dir, fresh_accelerate):
    from colordiff.training.distill import main

    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_model_dir, teacher)
    for part, extra in (("scheduler/scheduler_config.json", {"rescale_betas_zero_snr": True,
                                                              "timestep_spacing": "trailing"}),
                        ("unet/config.json", {})):  # a v-prediction model folder on a zero terminal SNR schedule
        path = teacher / part
        config = json.loads(path.read_text())
        path.write_text(json.dumps({**config, "prediction_type": "v_prediction", **extra}))
    final = main(_config(teacher, tmp_path / "out", lora_rank=4, max_train_steps=2))
    distilled = load_pipeline(final)
    assert type(distilled.scheduler) is LCMScheduler
    assert distilled.scheduler.config.prediction_type == "v_prediction"
    assert distilled.scheduler.config.rescale_betas_zero_snr  # the teacher's schedule
    assert distilled.unet.config.time_cond_proj_dim == 256
    merged, base = distilled.unet.state_dict(), _unet_weights(teacher)
    assert set(merged) - set(base) == {"time_embedding.cond_proj.weight"}  # LoRA merged: plain U-Net keys
    changed = {k for k, v in base.items() if not torch.equal(merged[k], v)}
    assert changed and all(re.search(r"\.(to_q|to_k|to_v|to_out\.0)\.weight$", k) for k in changed), changed
    assert merged["time_embedding.cond_proj.weight"].abs().max() > 0
    losses = _losses(tmp_path / "out")
    assert len(losses) == 2 and all(np.isfinite(losses))


def test_bad_settings_and_teachers_are_usage_errors(tmp_path, tiny_model_dir):
    from colordiff.cli import main as cli
    from colordiff.config import ConfigError, load_config
    from colordiff.errors import UsageError
    from colordiff.training.distill import load_teacher

    shipped = load_config(DistillConfig, [REPO / "configs" / "colordiff" / "distill_lcm.yaml"])
    assert (shipped.learning_rate, shipped.train_batch_size, shipped.mixed_precision) == (1e-6, 12, "bf16")
    tiny = load_config(DistillConfig, [REPO / "configs" / "colordiff" / "distill_lcm.yaml",
                                       REPO / "configs" / "tiny" / "distill_lcm.yaml"])
    assert (tiny.resolution, tiny.max_train_steps, tiny.loss_type, tiny.w_max) == (64, 4, "huber", 15.0)
    with pytest.raises(ConfigError, match="w_max must be at least w_min"):
        load_config(DistillConfig, [], ["w_min=8", "w_max=4"])
    with pytest.raises(ConfigError, match="loss_type must be one of huber, l2"):
        load_config(DistillConfig, [], ["loss_type=l1"])
    assert cli(["init-model", str(tmp_path / "seada"), "--tiny", "--method", "seada"]) == 0
    with pytest.raises(UsageError, match="SeAdaPipeline folder; only ColorDiff models can be distilled"):
        load_teacher(DistillConfig(pretrained_model_name_or_path=str(tmp_path / "seada")))
    pipe = load_pipeline(tiny_model_dir)
    pipe.unet = make_student(pipe.unet, DistillConfig())
    pipe.save_pretrained(tmp_path / "distilled")
    with pytest.raises(UsageError, match="already takes a guidance-scale input"):
        load_teacher(DistillConfig(pretrained_model_name_or_path=str(tmp_path / "distilled")))
