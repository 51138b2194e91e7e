"""Latent consistency distillation of a trained ColorDiff model into a few-step one (LCM: Luo et al. 2023).

Teacher: the ColorDiff model folder given (frozen), with classifier-free guidance on the text at a guidance scale w
drawn per example from U[w_min, w_max]: eps = eps_u + w (eps_c - eps_u), the gray latent z_c in both branches and the
empty prompt as the unconditional text (as colordiff.sampling.guided_noise_prediction samples). Student: the same
concat U-Net with the guidance scale as an input (`time_cond_proj_dim`, fed `guidance_embedding(w)`), initialised
from the teacher with the new projection at zero, so that it starts as the teacher. Target: an EMA of the student.
The loss and the solver are colordiff/training/lcm.py's; the loop (checkpoints, exact resume, EMA, logs) is the one
every training script shares. The exported folder samples with LCMScheduler (docs/training.md, "Distilling").
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
from diffusers import LCMScheduler
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from safetensors.torch import load_file, save_file
from torch import nn

from colordiff.config import setting
from colordiff.devices import mixed_precision_dtype
from colordiff.errors import UsageError
from colordiff.pipelines import ColorDiffPipeline, load_pipeline
from colordiff.pipelines.registry import UnknownPipelineError
from colordiff.sampling import guidance_embedding, guided_noise_prediction
from colordiff.schedulers import check_prediction_type
from colordiff.training.common import (
    batch_moments,
    build_dataset,
    export_pipeline,
    how_trained,
    latent_dataset,
    place,
    place_frozen,
    restore_frozen,
    training_card,
    validation_grid,
)
from colordiff.training.config import TrainConfig
from colordiff.training.lcm import ConsistencySchedule, consistency_loss
from colordiff.training.loop import make_accelerator, train
from colordiff.training.lora import LoraSettings, add_lora, fused


@dataclass
class DistillConfig(LoraSettings, TrainConfig):
    pretrained_model_name_or_path: str = "outputs/colordiff_unet/model"  # the trained ColorDiff model (teacher)
    output_dir: str = "outputs/distill_lcm"
    train_batch_size: int = setting(12, min=1)  # per process (diffusers' LCM recipe)
    max_train_steps: int = setting(4000, min=1)
    learning_rate: float = setting(1e-6, above=0)  # full fine-tune; LoRA: 1e-4
    adam_weight_decay: float = setting(0.0, min=0)
    validation_inference_steps: int = setting(4, min=1)
    latents_cache: str | None = None  # precomputed VAE latents (scripts/precompute_latents.py), as for train_unet
    # guidance scale w of the teacher (eps_u + w (eps_c - eps_u)), drawn per example; the student learns w as input
    w_min: float = setting(3.0, min=1)
    w_max: float = setting(15.0, min=1)
    num_ddim_timesteps: int = setting(50, min=1)  # N: the solver's grid over the teacher's timesteps, k = T // N
    timestep_scaling: float = setting(10.0, above=0)  # of the boundary scalings c_skip / c_out
    target_ema_decay: float = setting(0.95, min=0, max=1)  # the target network: mu <- d mu + (1 - d) theta
    loss_type: str = setting("huber", choices=("huber", "l2"))
    huber_c: float = setting(0.001, above=0)
    time_cond_proj_dim: int = setting(256, min=1)  # width of the student's guidance-scale embedding
    # lora_rank (LoraSettings) 0: the whole student trains; > 0: a LoRA of this rank on `lora_target_modules`
    # (merged into the export), with the guidance-scale projection trained alongside it

    def config_checks(self):
        yield from super().config_checks()
        if self.w_min > self.w_max:
            yield "w_max", f"must be at least w_min ({self.w_min}), got {self.w_max}"


def load_teacher(config: DistillConfig) -> ColorDiffPipeline:
    """The trained ColorDiff model folder / hub id; anything else is a usage error."""
    source = config.pretrained_model_name_or_path
    try:
        pipe = load_pipeline(source, local_files_only=config.local_files_only)
    except UnknownPipelineError:
        raise UsageError(f"{source}: not a ColorDiff model folder; distillation needs a trained ColorDiff model "
                         "(scripts/train_unet.py)") from None
    if not isinstance(pipe, ColorDiffPipeline):
        raise UsageError(f"{source}: a {type(pipe).__name__} folder; only ColorDiff models can be distilled")
    if pipe.unet.config.get("time_cond_proj_dim") is not None:
        raise UsageError(f"{source}: its U-Net already takes a guidance-scale input (time_cond_proj_dim): "
                         "it is distilled already")
    check_prediction_type(pipe.unet, pipe.scheduler)
    return pipe


def make_student(teacher: nn.Module, config: DistillConfig) -> nn.Module:
    """The teacher's architecture plus the guidance-scale input (`time_embedding.cond_proj`, zero: the student starts
    as the teacher), with the teacher's weights; with lora_rank > 0, a LoRA on it and only that (plus cond_proj)
    trainable."""
    settings = {k: v for k, v in teacher.config.items() if not k.startswith("_")}
    student = type(teacher).from_config({**settings, "time_cond_proj_dim": config.time_cond_proj_dim})
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    if unexpected or not missing or any(not k.startswith("time_embedding.cond_proj.") for k in missing):
        raise ValueError(f"student weights do not match the teacher's: missing={missing}, unexpected={unexpected}")
    cond_proj = student.time_embedding.cond_proj
    with torch.no_grad():
        for parameter in cond_proj.parameters():
            parameter.zero_()
    student = student.to(teacher.device).train()
    if config.lora_rank > 0:  # lora_B = 0: no change; the guidance-scale input trains alongside the LoRA
        add_lora(student, config, fully_trained=["time_embedding.cond_proj"])
    return student


TARGET_FILE = "target_unet.safetensors"  # in each checkpoint: the target network's averaged parameters


class DistillTask:
    """Trainable: the student (or its LoRA). Frozen: the teacher, VAE, text encoder. The target network (an EMA of
    the student's trainable parameters) is task state: accelerate's save / load-state hooks write it into every
    checkpoint (TARGET_FILE) and read it back on resume."""

    def __init__(self, config: DistillConfig, accelerator):
        self.config, self.accelerator = config, accelerator
        self.pipe = load_teacher(config)
        self.schedule = ConsistencySchedule(self.pipe.scheduler.config, config.num_ddim_timesteps,
                                            config.timestep_scaling).to(accelerator.device)
        self.student = make_student(self.pipe.unet, config)  # from the float32 teacher, before it is cast
        if config.gradient_checkpointing:
            self.student.enable_gradient_checkpointing()
        self.target = copy.deepcopy(self.student).requires_grad_(False).eval()
        live = dict(self.student.named_parameters())  # the parameters the target averages: the trained ones
        self.averaged = {name: (p, live[name]) for name, p in self.target.named_parameters()
                         if live[name].requires_grad}  # name -> (target parameter, student parameter)
        accelerator.register_save_state_pre_hook(self._save_target)
        accelerator.register_load_state_pre_hook(self._load_target)
        self.weight_dtype = weight_dtype = mixed_precision_dtype(accelerator.mixed_precision)
        self.kept = {}  # the frozen parts' exact weights, restored for export
        for frozen in (self.pipe.vae, self.pipe.text_encoder):
            place_frozen(frozen.requires_grad_(False).eval(), accelerator.device, weight_dtype, self.kept)
        self.teacher = place(self.pipe.unet.requires_grad_(False).eval(), accelerator.device, weight_dtype)
        place(self.target, accelerator.device)  # float32, run under autocast like the student
        with torch.no_grad():
            self.uncond = self.pipe.encode_prompt([""]).float()  # (1, L, d): the unconditional branch's text
        self.dataset = latent_dataset(config) if config.latents_cache else build_dataset(config, accelerator)

    def trainable(self) -> dict[str, nn.Module]:
        return {"unet": self.student}

    def loss(self, modules: dict[str, nn.Module], batch: dict) -> torch.Tensor:
        """LCM's consistency distillation loss (Algorithm 1) with the skipping-step DDIM solver."""
        config, schedule = self.config, self.schedule
        latents, condition, text_embeds = self._inputs(batch)  # z_0, z_c (B, 4, h, w); c (B, L, d)
        batch_size, device = latents.shape[0], latents.device
        index = torch.randint(0, len(schedule.timesteps), (batch_size,), device=device)
        start = schedule.timesteps.to(device)[index]  # t_{n+k}
        end = schedule.previous_timesteps(index)  # t_n
        noise = torch.randn(latents.shape, device=device, dtype=latents.dtype)
        noisy = schedule.noise_scheduler.add_noise(latents, noise, start)  # z_{t_{n+k}}
        scale = config.w_min + (config.w_max - config.w_min) * torch.rand(batch_size, device=device)  # w
        w_embedding = guidance_embedding(scale, config.time_cond_proj_dim)  # (B, d)
        output = modules["unet"](noisy, start, text_embeds, condition_latents=condition,
                                 timestep_cond=w_embedding).sample
        prediction = schedule.consistency(output.float(), start, noisy)  # f_theta(z_{t_{n+k}}, w, c, t_{n+k})
        with torch.no_grad():
            guided = self._teacher_prediction(noisy, start, condition, text_embeds, scale)
            previous = schedule.ddim_step(schedule.predicted_original(guided, start, noisy),
                                          schedule.predicted_noise(guided, start, noisy), index)  # z_hat_{t_n}
            with self.accelerator.autocast():
                target_output = self.target(previous, end, text_embeds, condition_latents=condition,
                                            timestep_cond=w_embedding).sample
            target = schedule.consistency(target_output.float(), end, previous)  # f_target(z_hat_{t_n}, w, c, t_n)
        return consistency_loss(prediction, target, config.loss_type, config.huber_c)

    def _teacher_prediction(self, noisy, timesteps, condition, text_embeds, scale) -> torch.Tensor:
        """The teacher's guided output eps_u + w (eps_c - eps_u) (or the same blend of v), float32, one U-Net call."""
        dtype = self.weight_dtype

        def teacher(*args, **kwargs):  # the blend in float32, whatever dtype the teacher runs in
            return SimpleNamespace(sample=self.teacher(*args, **kwargs).sample.float())

        uncond = self.uncond.to(dtype).expand_as(text_embeds)
        return guided_noise_prediction(teacher, noisy.to(dtype), timesteps.repeat(2), condition.to(dtype),
                                       text_embeds.to(dtype), uncond, scale.view(-1, 1, 1, 1))

    def _inputs(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z_0 ~ q(z | x) of the color image, z_c (the gray image's posterior mode, as at inference), the text c."""
        device, vae = self.accelerator.device, self.pipe.vae
        moments, gray = batch_moments(batch, vae, device, self.weight_dtype)
        scale = vae.config.scaling_factor
        with torch.no_grad():
            latents = DiagonalGaussianDistribution(moments.float()).sample() * scale  # (B, 4, h, w)
            text_embeds = self.pipe.encode_prompt(list(batch["text"])).float()  # (B, L, d)
        return latents, gray.float() * scale, text_embeds

    @torch.no_grad()
    def after_update(self, modules: dict[str, nn.Module]) -> None:
        """The target network's EMA over the student's trainable parameters (the others are equal and stay so)."""
        targets, sources = zip(*self.averaged.values(), strict=True)
        torch._foreach_lerp_(list(targets), [p.detach() for p in sources], 1.0 - self.config.target_ema_decay)

    def _save_target(self, models, weights, output_dir: str) -> None:
        if self.accelerator.is_main_process:
            save_file({name: p.detach().to("cpu").contiguous() for name, (p, _) in self.averaged.items()},
                      Path(output_dir) / TARGET_FILE)

    @torch.no_grad()
    def _load_target(self, models, input_dir: str) -> None:
        path = Path(input_dir) / TARGET_FILE
        if not path.is_file():
            raise UsageError(f"{path}: missing; {input_dir} is not a checkpoint of scripts/distill.py")
        tensors = load_file(path)
        if set(tensors) != set(self.averaged):
            raise UsageError(f"{path}: its parameters do not match this student (another lora_rank or model?)")
        for name, (p, _) in self.averaged.items():
            p.copy_(tensors[name])

    def validate(self, modules: dict[str, nn.Module], config: TrainConfig):
        return validation_grid(self._pipeline(modules["unet"]), config)

    def export(self, modules: dict[str, nn.Module], path: Path) -> None:
        for frozen in (self.pipe.vae, self.pipe.text_encoder):
            restore_frozen(frozen, self.kept)
        how = how_trained(self.config, "distill.py, LCM", lora_also=" (the guidance-scale input in full)")
        export_pipeline(self._pipeline(fused(modules["unet"])), path,
                        card=training_card(self.config, {"unet": "LCM student with a guidance-scale input: " + how}))

    def scheduler(self) -> LCMScheduler:
        """LCMScheduler on the teacher's schedule, its timestep grid the solver's (original_inference_steps = N)."""
        return LCMScheduler.from_config(self.pipe.scheduler.config,
                                        original_inference_steps=self.config.num_ddim_timesteps,
                                        timestep_scaling=self.config.timestep_scaling)

    def _pipeline(self, unet: nn.Module) -> ColorDiffPipeline:
        pipe = ColorDiffPipeline(vae=self.pipe.vae, unet=unet, text_encoder=self.pipe.text_encoder,
                                 tokenizer=self.pipe.tokenizer, scheduler=self.scheduler())
        pipe.prior_generators = self.pipe.prior_generators  # the teacher's recorded prior generators
        return pipe


def main(config: DistillConfig) -> Path:
    accelerator = make_accelerator(config)
    return train(config, DistillTask(config, accelerator), accelerator)
