"""Timestep bias (NoiseScheduleConfig.timestep_bias_*): which noise levels the diffusion tasks train on."""

from pathlib import Path

import pytest
import torch

from colordiff.config import ConfigError, load_config
from colordiff.training.config import sample_timesteps, timestep_weights
from colordiff.training.seada import TrainSeAdaConfig
from colordiff.training.unet import TrainUNetConfig


def test_later_bias_weights_the_noisiest_portion_by_the_multiplier():
    config = TrainUNetConfig(timestep_bias_strategy="later", timestep_bias_multiplier=4.0, timestep_bias_portion=0.25)
    weights = timestep_weights(config, 1000)
    assert weights.shape == (1000,)
    assert float(weights.sum()) == pytest.approx(1.0)
    assert float(weights[750] / weights[749]) == pytest.approx(4.0)  # the step into the biased portion
    assert float(weights[:750].std()) == 0 and float(weights[750:].std()) == 0
    assert float(weights[750:].sum()) == pytest.approx(4 * 250 / (4 * 250 + 750))
    torch.manual_seed(0)
    drawn = sample_timesteps(config, 1000, 20000, "cpu")
    assert drawn.dtype == torch.int64 and int(drawn.min()) >= 0 and int(drawn.max()) <= 999
    assert float((drawn >= 750).float().mean()) == pytest.approx(4 / 7, abs=0.015)


def test_earlier_bias_weights_the_first_portion():
    weights = timestep_weights(TrainSeAdaConfig(timestep_bias_strategy="earlier", timestep_bias_multiplier=3.0,
                                                timestep_bias_portion=0.1), 1000)
    assert float(weights[0] / weights[999]) == pytest.approx(3.0)
    assert float(weights[99] / weights[100]) == pytest.approx(3.0)


def test_no_bias_draws_exactly_what_uniform_training_draws():
    """The default keeps the papers' uniform draw and its random stream (exact resume, saved references)."""
    for config in (TrainUNetConfig(), TrainUNetConfig(timestep_bias_strategy="later", timestep_bias_multiplier=1.0)):
        assert timestep_weights(config, 1000) is None
        torch.manual_seed(3)
        drawn = sample_timesteps(config, 1000, 64, "cpu")
        torch.manual_seed(3)
        assert torch.equal(drawn, torch.randint(0, 1000, (64,)))


@pytest.mark.parametrize("override", ["timestep_bias_strategy=sooner", "timestep_bias_multiplier=0",
                                      "timestep_bias_portion=1.5"])
def test_bad_bias_settings_are_config_errors(override):
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        load_config(TrainUNetConfig, [], [override])


def test_photo_recipe_draws_timesteps_uniformly_and_the_world_recipe_biases():
    """The photo miniature samples in several steps and needs the low-noise end trained; the world samples one step."""
    repo = Path(__file__).resolve().parents[1]
    photo = [repo / "configs/colordiff/unet.yaml", repo / "configs/mini/unet.yaml"]
    assert load_config(TrainUNetConfig, photo).timestep_bias_strategy == "none"
    world = load_config(TrainUNetConfig, [*photo, repo / "configs/mini/world_unet.yaml"])
    assert (world.timestep_bias_strategy, world.timestep_bias_multiplier, world.timestep_bias_portion) == \
        ("later", 20.0, 0.1)
