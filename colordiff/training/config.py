"""The settings every training script shares; key names follow diffusers' example scripts where one exists.

Each number's range is declared with its field (colordiff/config.py's `setting`) and checked when the recipe is read.
The keys the task configs add (colordiff/training/unet.py, decoder.py, seada.py) are checked by TASK_RULES, which
apply to whichever of those keys a schema has. The diffusion tasks (U-Net, SeAda) add NoiseScheduleConfig's keys.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from colordiff.config import describe_rules, follows_rules, setting
from colordiff.schedulers import SAMPLING_SPACING

# the ranges of the keys the task configs add, by key
TASK_RULES: dict[str, dict] = {
    "conditioning_dropout": {"min": 0, "max": 1},  # a probability
    "latents_shard_size": {"min": 1},
    "perceptual_weight": {"min": 0},
    "stage": {"choices": (0, 1, 2, 3)},
    "lambda_r": {"min": 0},
    "lambda_s": {"min": 0},
    "mapper_channels": {"min": 1},
    "rca_head_dim": {"min": 1},
}


PREDICTION_TYPES = ("epsilon", "v_prediction")


@dataclass
class NoiseScheduleConfig:
    """The noise schedule a diffusion task trains on (mixed into its config; docs/training.md, "Zero terminal SNR").

    The defaults are both papers': the base model's schedule (SD1.5's) and the eps target. zero_terminal_snr rescales
    the betas so that the last training step is pure noise (Lin et al. 2023); it needs the v target, since eps at
    SNR 0 says nothing about the image. Both are written into the exported scheduler config (with "trailing" timestep
    spacing at any setting, so sampling starts at the last step) and the prediction type into the trained network's
    config.
    """

    zero_terminal_snr: bool = False
    prediction_type: str = setting("epsilon", choices=PREDICTION_TYPES)
    # which timesteps training draws (the timestep bias of diffusers' SDXL training example): "later" draws each of
    # the last timestep_bias_portion of the schedule (the noisiest, where a colorizer decides its colors)
    # timestep_bias_multiplier times as often as the others, "earlier" the first portion; "none": uniform (the papers)
    timestep_bias_strategy: str = setting("none", choices=("none", "earlier", "later"))
    timestep_bias_multiplier: float = setting(1.0, above=0)
    timestep_bias_portion: float = setting(0.25, above=0, max=1)
    # how each example's squared error counts (colordiff/training/losses.py's weighted_mse): "none" (the papers), or
    # "snr_plus_one": an eps example weighted 1 / alpha_bar_t, the loss of the v its prediction implies, so that high
    # noise, where colors are decided, weighs as much as with the v target (no change for v_prediction)
    loss_weighting: str = setting("none", choices=("none", "snr_plus_one"))


def schedule_settings(config: NoiseScheduleConfig) -> dict:
    """The scheduler config keys the noise schedule settings fix, for the training scheduler and the sampler alike."""
    # the first sampling step is t = T - 1 at any step count, where training saw the most noise (SNR 0 with
    # zero_terminal_snr)
    return {"rescale_betas_zero_snr": config.zero_terminal_snr, "prediction_type": config.prediction_type,
            "timestep_spacing": SAMPLING_SPACING}


def timestep_weights(config: NoiseScheduleConfig, num_train_timesteps: int) -> torch.Tensor | None:
    """Each training timestep's probability (num_train_timesteps,) under the configured bias; None when uniform."""
    if config.timestep_bias_strategy == "none" or config.timestep_bias_multiplier == 1.0:
        return None
    weights = torch.ones(num_train_timesteps)
    biased = max(1, round(config.timestep_bias_portion * num_train_timesteps))
    span = slice(num_train_timesteps - biased, None) if config.timestep_bias_strategy == "later" else slice(0, biased)
    weights[span] *= config.timestep_bias_multiplier
    return weights / weights.sum()


def sample_timesteps(config: NoiseScheduleConfig, num_train_timesteps: int, batch_size: int,
                     device: torch.device | str) -> torch.Tensor:
    """(batch_size,) training timesteps: uniform (torch.randint, the papers' sampling), or drawn by timestep_weights."""
    weights = timestep_weights(config, num_train_timesteps)
    if weights is None:
        return torch.randint(0, num_train_timesteps, (batch_size,), device=device)
    return torch.multinomial(weights, batch_size, replacement=True).to(device)


@dataclass
class TrainConfig:
    # model
    pretrained_model_name_or_path: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"  # SD1.5, or a ColorDiff model
    local_files_only: bool = False
    output_dir: str = "outputs/train"
    seed: int = setting(0, min=0, max=2**32 - 1)  # numpy's seed range (accelerate's set_seed seeds numpy too)
    # data: an ImageNet-style tree or flat folder (train_data_dir), or a file list (train_file_list)
    train_data_dir: str | None = None
    train_file_list: str | None = None
    text_source: str = "classname"  # classname (ImageNet synset folders) | captions | empty
    caption_file: str | None = None  # JSONL caption cache (scripts/caption.py)
    caption_key: str = "caption_gray"
    resolution: int = setting(512, min=8, multiple_of=8)  # crop side in pixels
    center_crop: bool = False
    resize_range: list[float] = field(default_factory=lambda: [1.0, 1.0])  # shorter side = resolution x U(low, high)
    random_flip: bool = True
    min_chroma: float = setting(3.0, min=0)  # images whose mean Lab chroma is below this are already gray: dropped
    max_pixels: int = setting(100_000_000, min=1)
    dataloader_num_workers: int = setting(0, min=0)
    # optimisation
    train_batch_size: int = setting(16, min=1)  # per process
    max_train_steps: int = setting(20_000, min=1)
    gradient_accumulation_steps: int = setting(1, min=1)
    learning_rate: float = setting(5e-5, above=0)
    lr_scheduler: str = "constant"  # any diffusers.optimization scheduler name
    lr_warmup_steps: int = setting(0, min=0)
    adam_beta1: float = setting(0.9, min=0, below=1)
    adam_beta2: float = setting(0.999, min=0, below=1)
    adam_weight_decay: float = setting(1e-2, min=0)
    adam_epsilon: float = setting(1e-8, above=0)
    max_grad_norm: float = setting(1.0, min=0)  # 0: no clipping
    mixed_precision: str = "no"  # no | fp16 | bf16
    gradient_checkpointing: bool = False
    allow_tf32: bool = True
    use_ema: bool = False
    ema_decay: float = setting(0.9999, min=0, max=1)
    # checkpoints: output_dir/checkpoint-<step>, written atomically, the oldest removed beyond the limit
    checkpointing_steps: int = setting(500, min=1)
    checkpoints_total_limit: int | None = setting(None, min=1)  # None: keep them all
    resume_from_checkpoint: str | None = None  # "latest" or a checkpoint folder
    # validation: colorize these images through the real pipeline every validation_steps
    validation_steps: int = setting(1000, min=1)
    validation_images: list[str] = field(default_factory=lambda: ["examples/photos"])
    validation_inference_steps: int = setting(50, min=1)
    validation_guidance_scale: float = setting(7.5, min=0)
    report_to: str = "tensorboard"  # tensorboard | none
    log_sample_indices: bool = False  # write each process's training-sample indices (data-order debugging)

    def config_checks(self):
        """The checks between values, and the ranges of the task configs' own keys (TASK_RULES)."""
        low_high = self.resize_range
        if len(low_high) != 2 or not 1.0 <= low_high[0] <= low_high[1]:
            yield "resize_range", f"must be [low, high] with 1 <= low <= high, got {list(low_high)}"
        if getattr(self, "zero_terminal_snr", False) and getattr(self, "prediction_type", None) == "epsilon":
            yield "zero_terminal_snr", ("needs prediction_type v_prediction (the eps target is ill-posed at SNR 0), "
                                        "got prediction_type epsilon")
        for spec in dataclasses.fields(self):
            rules, value = TASK_RULES.get(spec.name), getattr(self, spec.name)
            if rules and not spec.metadata and value is not None and not follows_rules(value, rules):
                yield spec.name, f"{describe_rules(rules)}, got {value!r}"
