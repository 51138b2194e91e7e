"""Zero terminal SNR with v-prediction (Lin et al. 2023): the training schedule, the loss targets of both tasks, the
exported scheduler and network configs, the config check, and model folders saved before the setting existed."""

import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from torch import nn

from colordiff.config import ConfigError, load_config
from colordiff.errors import UsageError
from colordiff.pipelines import load_pipeline
from colordiff.testing import tiny_scheduler, tiny_seada_pipeline
from colordiff.training.common import noise_schedulers
from colordiff.training.losses import diffusion_loss, weighted_mse
from colordiff.training.seada import SeAdaTask, TrainSeAdaConfig, stage_plan
from colordiff.training.unet import TrainUNetConfig

REPO = Path(__file__).resolve().parents[1]
ZERO_SNR = {"zero_terminal_snr": True, "prediction_type": "v_prediction"}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def fresh_accelerate():
    from accelerate.state import AcceleratorState, GradientState

    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def _public(config) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def _velocity(scheduler, latents, noise, timesteps):
    """v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) z, by hand."""
    alpha_bar = scheduler.alphas_cumprod.double()[timesteps].view(-1, 1, 1, 1)
    return (alpha_bar.sqrt() * noise.double() - (1 - alpha_bar).sqrt() * latents.double()).float()


def test_training_schedule_ends_at_zero_snr_and_defaults_keep_the_base_schedule():
    base = tiny_scheduler()  # SD1.5's schedule, as every model folder colordiff writes
    train, sampler = noise_schedulers(TrainUNetConfig(**ZERO_SNR), base)
    assert train.alphas_cumprod[-1].item() == 0.0 and train.alphas_cumprod[-2].item() > 0
    assert isinstance(train, DDPMScheduler) and isinstance(sampler, DDIMScheduler)
    assert sampler.alphas_cumprod[-1].item() == 0.0
    for scheduler in (train, sampler):
        assert scheduler.config.rescale_betas_zero_snr and scheduler.config.prediction_type == "v_prediction"
        assert scheduler.config.timestep_spacing == "trailing"
    sampler.set_timesteps(4)
    assert sampler.timesteps[0].item() == 999  # sampling starts where training saw pure noise

    today = DDPMScheduler.from_config(base.config)
    train, sampler = noise_schedulers(TrainSeAdaConfig(), base)
    assert torch.equal(train.alphas_cumprod, today.alphas_cumprod) and train.alphas_cumprod[-1] > 1e-3
    # the base's schedule and target; only the sampler's spacing differs: from t = 999 at any step count, where
    # SD1.5's "leading" spacing runs a single step at t = 1
    assert base.config.timestep_spacing == "leading"
    assert _public(train.config) == {**_public(today.config), "timestep_spacing": "trailing"}
    assert type(sampler) is type(base) and _public(sampler.config) == {**_public(base.config),
                                                                         "timestep_spacing": "trailing"}
    for steps in (1, 4, 50):
        sampler.set_timesteps(steps)
        assert sampler.timesteps[0].item() == 999


def test_snr_plus_one_weighting_makes_an_eps_loss_the_loss_of_the_v_it_implies():
    """loss_weighting snr_plus_one: an eps prediction's error weighted by 1 / alpha_bar_t is the squared error of the v
    it implies, at each timestep (by hand: z_hat from eps_hat, then v_hat); the plain loss is the papers' MSE, and a v
    prediction is left as it is."""
    eps_schedule, _ = noise_schedulers(TrainSeAdaConfig(), tiny_scheduler())  # SD1.5's schedule, eps
    g = torch.Generator().manual_seed(0)
    latents, noise, guess = (torch.randn(4, 4, 8, 8, generator=g) for _ in range(3))
    timesteps = torch.tensor([0, 300, 700, 999])
    noisy = eps_schedule.add_noise(latents, noise, timesteps)
    alpha_bar = eps_schedule.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    z_hat = (noisy - (1 - alpha_bar).sqrt() * guess) / alpha_bar.sqrt()  # the z_0 the eps guess implies
    v_hat = alpha_bar.sqrt() * guess - (1 - alpha_bar).sqrt() * z_hat
    v = _velocity(eps_schedule, latents, noise, timesteps)
    by_hand = (v_hat - v).pow(2).flatten(1).mean(dim=1).mean()
    weighted = weighted_mse(guess, noise, eps_schedule, timesteps, "snr_plus_one")
    torch.testing.assert_close(weighted, by_hand, rtol=1e-4, atol=0)
    assert weighted > 20 * weighted_mse(guess, noise, eps_schedule, timesteps, "none")  # t = 999 counts 1/0.0047
    torch.testing.assert_close(weighted_mse(guess, noise, eps_schedule, timesteps, "none"),
                               torch.nn.functional.mse_loss(guess, noise))
    v_schedule, _ = noise_schedulers(TrainUNetConfig(**ZERO_SNR), tiny_scheduler())
    assert torch.equal(weighted_mse(guess, v, v_schedule, timesteps, "snr_plus_one"),
                       weighted_mse(guess, v, v_schedule, timesteps, "none"))
    with pytest.raises(ConfigError, match="loss_weighting must be one of none, snr_plus_one"):
        load_config(TrainSeAdaConfig, [], ["loss_weighting=snr"])


def test_unet_loss_target_is_v():
    scheduler, _ = noise_schedulers(TrainUNetConfig(**ZERO_SNR), tiny_scheduler())
    g = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    timesteps = torch.tensor([0, 500, 999])

    def unet(noisy, t, text, condition_latents):  # predicts nothing: the loss is the target's mean square
        return SimpleNamespace(sample=torch.zeros_like(noisy))

    loss = diffusion_loss(unet, scheduler, latents, latents, torch.zeros(3, 77, 32), noise, timesteps)
    v = _velocity(scheduler, latents, noise, timesteps)
    assert torch.allclose(v[2], -latents[2], atol=1e-6)  # at SNR 0, v = -z
    torch.testing.assert_close(loss, (v**2).mean())
    assert not torch.allclose(loss, (noise**2).mean())


class _ZeroControl(nn.Module):
    """Stands in for SeAda's control model: records z_t and t, predicts zero."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))
        self.seen = []

    def forward(self, unet, noisy, timesteps, text_embeds, control_image, use_rca=True):
        self.seen.append(timesteps)
        return SimpleNamespace(sample=torch.zeros_like(noisy) * self.weight)


def test_seada_loss_target_is_v():
    class Recording(DDPMScheduler):
        def add_noise(self, latents, noise, timesteps):
            self.record = (latents, noise, timesteps)
            return super().add_noise(latents, noise, timesteps)

    pipe = tiny_seada_pipeline()
    base = tiny_scheduler()
    scheduler = Recording.from_config(base.config, rescale_betas_zero_snr=True, prediction_type="v_prediction")
    task = SimpleNamespace(  # the attributes SeAdaTask.loss reads (as colordiff/training/seada_bench.py)
        config=SimpleNamespace(conditioning_dropout=0.0, reconstruction_target="e_g", timestep_bias_strategy="none",
                               loss_weighting="none"),
        accelerator=SimpleNamespace(device=torch.device("cpu")), pipe=pipe, plan=stage_plan(2),
        noise_scheduler=scheduler, lambda_r=0.0, lambda_s=1.0, weight_dtype=torch.float32)
    color = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    batch = {"pixel_values": color, "gray_values": color.mean(1, keepdim=True).expand(-1, 3, -1, -1),
             "text": ["a gray photo"] * 2, "text_color": ["a red photo"] * 2}
    control = _ZeroControl()
    loss = SeAdaTask.loss(task, {"control": control}, batch)
    latents, noise, timesteps = scheduler.record
    assert torch.equal(control.seen[0], timesteps)
    torch.testing.assert_close(loss, (_velocity(scheduler, latents, noise, timesteps) ** 2).mean())
    assert not torch.allclose(loss, (noise**2).mean())


@pytest.mark.parametrize("schema, recipe", [(TrainUNetConfig, "unet.yaml"), (TrainSeAdaConfig, "seada_stage0.yaml")])
def test_zero_terminal_snr_with_epsilon_is_a_one_line_config_error(schema, recipe):
    with pytest.raises(ConfigError) as err:
        load_config(schema, [REPO / "configs" / "tiny" / recipe], ["zero_terminal_snr=true"])
    assert str(err.value) == ("zero_terminal_snr needs prediction_type v_prediction (the eps target is ill-posed at "
                              "SNR 0), got prediction_type epsilon")
    with pytest.raises(ConfigError, match="prediction_type must be one of epsilon, v_prediction, got 'sample'"):
        load_config(schema, [REPO / "configs" / "tiny" / recipe], ["prediction_type=sample"])
    method = "colordiff" if schema is TrainUNetConfig else "seada"
    config = load_config(schema, [REPO / "configs" / "tiny" / recipe, REPO / "configs" / method / "zero_snr.yaml"])
    assert (config.zero_terminal_snr, config.prediction_type) == (True, "v_prediction")
    assert (schema().zero_terminal_snr, schema().prediction_type) == (False, "epsilon")  # the papers' recipes


def _exported_schedule(model: Path, network: str) -> None:
    scheduler = json.loads((model / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "DDIMScheduler"
    assert scheduler["rescale_betas_zero_snr"] is True and scheduler["prediction_type"] == "v_prediction"
    assert scheduler["timestep_spacing"] == "trailing"
    assert json.loads((model / network / "config.json").read_text())["prediction_type"] == "v_prediction"
    pipe = load_pipeline(model)
    assert getattr(pipe, network).config.prediction_type == pipe.scheduler.config.prediction_type == "v_prediction"


def test_tiny_unet_training_exports_its_schedule(tmp_path, tiny_model_dir, fresh_accelerate):
    from colordiff.training.unet import main

    out = tmp_path / "out"
    overrides = {"pretrained_model_name_or_path": tiny_model_dir, "output_dir": out, "max_train_steps": 2,
                 "train_data_dir": REPO / "examples" / "photos", "validation_steps": 2}
    config = load_config(TrainUNetConfig, [REPO / "configs" / "tiny" / "unet.yaml",
                                           REPO / "configs" / "colordiff" / "zero_snr.yaml"],
                         [f"{k}={v}" for k, v in overrides.items()])
    model = main(config)
    assert (out / "validation" / "step-0000002.png").is_file()  # sampled through the pipeline, v-prediction
    _exported_schedule(model, "unet")


def _seada_stage(stage: int, source: Path, out: Path, extra: list[Path], **overrides) -> Path:
    from colordiff.training.seada import main

    overrides = {"pretrained_model_name_or_path": source, "output_dir": out, "max_train_steps": 1,
                 "train_batch_size": 1, "validation_steps": 1, **overrides}
    config = load_config(TrainSeAdaConfig, [REPO / "configs" / "tiny" / f"seada_stage{stage}.yaml", *extra],
                         [f"{k}={v}" for k, v in overrides.items()])
    return main(config)


def _v_prediction_seada(path: Path) -> None:
    """An untrained tiny SeAda model over a base whose U-Net predicts v on a zero-terminal-SNR schedule."""
    pipe = tiny_seada_pipeline()
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, prediction_type="v_prediction",
                                               rescale_betas_zero_snr=True)
    pipe.control.register_to_config(prediction_type="v_prediction")
    pipe.save_pretrained(path, safe_serialization=True)


def test_seada_stage0_warns_when_its_target_is_not_what_its_frozen_unet_predicts(tmp_path, fresh_accelerate):
    tiny_seada_pipeline().save_pretrained(tmp_path / "eps", safe_serialization=True)
    _v_prediction_seada(tmp_path / "v")
    zero_snr = [REPO / "configs" / "seada" / "zero_snr.yaml"]
    with pytest.warns(UserWarning, match=r"its U-Net predicts epsilon and stays frozen .* learn "
                                         r"prediction_type=v_prediction"):
        _seada_stage(0, tmp_path / "eps", tmp_path / "a", zero_snr, validation_images=[])
    with pytest.warns(UserWarning, match=r"its U-Net predicts v_prediction .* prediction_type=epsilon"):
        _seada_stage(0, tmp_path / "v", tmp_path / "b", [], validation_images=[])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _seada_stage(0, tmp_path / "v", tmp_path / "c", zero_snr, validation_images=[])
    assert not [w for w in caught if "stays frozen" in str(w.message)]


def test_tiny_seada_stage_exports_its_schedule_and_the_next_stage_keeps_it(tmp_path, fresh_accelerate):
    _v_prediction_seada(tmp_path / "init")
    zero_snr = [REPO / "configs" / "seada" / "zero_snr.yaml"]
    model = _seada_stage(0, tmp_path / "init", tmp_path / "stage0", zero_snr)
    assert (tmp_path / "stage0" / "validation" / "step-0000001.png").is_file()
    _exported_schedule(model, "control")
    with pytest.raises(UsageError, match=r"trained with zero_terminal_snr=True, prediction_type=v_prediction; "
                                         r"stage I must keep them"):
        _seada_stage(1, model, tmp_path / "stage1", [], validation_images=[])


def test_folders_saved_before_the_key_load_as_epsilon(tmp_path):
    from colordiff.cli import main

    for method, network in (("colordiff", "unet"), ("seada", "control")):
        folder = tmp_path / method
        assert main(["init-model", str(folder), "--tiny", "--method", method]) == 0
        config_file = folder / network / "config.json"
        config = json.loads(config_file.read_text())
        assert config["prediction_type"] == "epsilon"  # what an untrained model predicts: SD1.5's eps
        del config["prediction_type"]
        config_file.write_text(json.dumps(config))
        pipe = load_pipeline(folder)
        assert getattr(pipe, network).config.prediction_type == "epsilon"
        assert pipe.scheduler.config.prediction_type == "epsilon"
