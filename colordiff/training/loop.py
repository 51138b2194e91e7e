"""The accelerate training loop shared by every training script.

A task (see `TrainingTask`) owns the models and the loss math; this loop owns the rest: mixed precision, gradient
accumulation, checkpoints that resume exactly (model, optimizer, LR scheduler, RNG states, EMA and data position),
NaN stops, logging, validation and the final model folder.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset

from colordiff.config import to_yaml
from colordiff.data import EpochShuffleSampler, collate
from colordiff.devices import accelerator_available
from colordiff.io import umask_permissions, write_image
from colordiff.training.checkpoint import (
    publish,
    read_log,
    remove_stale_staging,
    resolve_resume,
    rotate_checkpoints,
    staging_dir,
    truncate_log,
)
from colordiff.training.config import TrainConfig

logger = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: training stops before the bad update touches the weights."""


class TrainingTask(Protocol):
    """A task may also define `after_update(modules)`, called after each optimizer update (before that step's
    checkpoint), e.g. for a target network's EMA (colordiff/training/distill.py)."""

    dataset: Dataset

    def trainable(self) -> dict[str, nn.Module]:
        """The modules that train (wrapped by accelerate); everything else the task keeps frozen."""

    def loss(self, modules: dict[str, nn.Module], batch: dict) -> torch.Tensor:
        """The training loss of one batch."""

    def validate(self, modules: dict[str, nn.Module], config: TrainConfig):
        """Colorize the validation images through the real pipeline: a grid image (PIL), or None."""

    def export(self, modules: dict[str, nn.Module], path: Path) -> None:
        """Write the final model folder (loadable by `colordiff colorize --model`)."""


class EMA:
    """Exponential moving average of named parameters (decay warm-up (1 + n) / (10 + n), as diffusers' EMAModel);
    saved as safetensors keyed by parameter name."""

    def __init__(self, named_parameters: list[tuple[str, nn.Parameter]], decay: float):
        self.names = [name for name, _ in named_parameters]
        self.parameters = [p for _, p in named_parameters]
        self.shadow = [p.detach().float().clone() for p in self.parameters]
        self.decay, self.num_updates = decay, 0

    @torch.no_grad()
    def update(self) -> None:
        self.num_updates += 1
        decay = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in self.parameters], 1.0 - decay)

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange the live weights and the averages (call twice to restore)."""
        for p, s in zip(self.parameters, self.shadow, strict=True):
            live = p.detach().clone()
            p.copy_(s.to(p.dtype))
            s.copy_(live.float())

    def save(self, folder: Path) -> None:
        save_file({n: s.contiguous() for n, s in zip(self.names, self.shadow, strict=True)}, folder / "ema.safetensors",
                  metadata={"num_updates": str(self.num_updates), "decay": str(self.decay)})

    def load(self, folder: Path) -> None:
        tensors = load_file(folder / "ema.safetensors")
        for name, s in zip(self.names, self.shadow, strict=True):
            s.copy_(tensors[name])
        with safe_open(folder / "ema.safetensors", "pt") as f:
            self.num_updates = int(f.metadata()["num_updates"])


def make_accelerator(config: TrainConfig) -> Accelerator:
    output = Path(config.output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        log_with=None if config.report_to == "none" else config.report_to,
        project_config=ProjectConfiguration(project_dir=str(output), logging_dir=str(output / "logs")),
        cpu=not accelerator_available(),  # without it, CPU processes launched together would not join up
    )
    set_seed(config.seed)  # any random initialisation in the task (new layers, random LPIPS) is reproducible
    if config.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return accelerator


def _update_loss(accelerator: Accelerator, losses: list[torch.Tensor]) -> float:
    """The loss a step stands for: the mean over its gradient-accumulation micro-batches and over the processes (as
    diffusers' scripts log it). The micro-batch losses stay on the device: one host sync per update, not per
    micro-batch. Non-finite on any process makes it non-finite on every process, so all of them stop together."""
    mean = torch.cat(losses).mean()
    return accelerator.reduce(mean, reduction="mean").item()


@dataclass
class _Run:
    """What the loop steps: the prepared modules, their optimizer, data and schedule, and the EMA of the weights."""

    output: Path
    modules: dict[str, nn.Module]
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    loader: DataLoader
    sampler: EpochShuffleSampler
    lr_scheduler: object
    ema: EMA | None


def train(config: TrainConfig, task: TrainingTask, accelerator: Accelerator) -> Path:
    """Run the loop to `max_train_steps`; returns the final model folder (output_dir/model)."""
    output = Path(config.output_dir)
    if accelerator.is_main_process:
        output.mkdir(parents=True, exist_ok=True)
        (output / "config.yaml").write_text(to_yaml(config))
        remove_stale_staging(output)  # checkpoint-<step>.tmp folders of a run stopped while saving
    set_seed(config.seed, device_specific=True)  # noise and dropout differ per process, data order does not
    run = _prepare(config, task, accelerator, output)
    global_step, resume = _resume(config, accelerator, run)
    _start_logs(accelerator, config, output, resume, global_step)
    if accelerator.is_main_process and config.report_to != "none":
        accelerator.init_trackers("colordiff", config={k: str(v) for k, v in asdict(config).items()})
    _run_epochs(config, task, accelerator, run, global_step)
    accelerator.wait_for_everyone()
    final = output / "model"
    if accelerator.is_main_process:
        if run.ema is not None:
            run.ema.swap()  # export the averaged weights
        task.export({k: accelerator.unwrap_model(m) for k, m in run.modules.items()}, final)
        umask_permissions(final)  # safetensors writes 0o600: a shared model folder must be readable by others
        if run.ema is not None:
            run.ema.swap()
    accelerator.end_training()
    return final


def _prepare(config: TrainConfig, task: TrainingTask, accelerator: Accelerator, output: Path) -> _Run:
    """The task's trainable modules, AdamW (a task may give some parameters their own learning rate through
    `param_groups`; the LR schedule scales every group), the loader, the LR schedule, all through accelerate."""
    modules = task.trainable()
    named = [(f"{name}.{pn}", p) for name, m in modules.items() for pn, p in m.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    groups = task.param_groups(named) if hasattr(task, "param_groups") else params
    # fused: one kernel updates every tensor (the world U-Net's 326 on a 2-core CPU: 3 ms a step, against 12-19 ms
    # for torch's per-tensor default there); CPU and CUDA, where accelerate places the modules, have the kernel
    optimizer = torch.optim.AdamW(groups, lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
                                  weight_decay=config.adam_weight_decay, eps=config.adam_epsilon,
                                  fused=accelerator.device.type in ("cpu", "cuda") or None)
    sampler = EpochShuffleSampler(len(task.dataset), config.seed)
    loader = DataLoader(task.dataset, batch_size=config.train_batch_size, sampler=sampler, collate_fn=collate,
                        num_workers=config.dataloader_num_workers, drop_last=False,
                        generator=torch.Generator().manual_seed(config.seed))  # keeps the global RNG untouched
    # accelerate steps a prepared LR scheduler once per process per update: scale its horizon to match
    lr_scheduler = get_scheduler(config.lr_scheduler, optimizer,
                                 num_warmup_steps=config.lr_warmup_steps * accelerator.num_processes,
                                 num_training_steps=config.max_train_steps * accelerator.num_processes)
    names = list(modules)
    *prepared, optimizer, loader, lr_scheduler = accelerator.prepare(*modules.values(), optimizer, loader,
                                                                     lr_scheduler)
    ema = EMA(named, config.ema_decay) if config.use_ema else None
    return _Run(output, dict(zip(names, prepared, strict=True)), params, optimizer, loader, sampler, lr_scheduler,
                ema)


def _resume(config: TrainConfig, accelerator: Accelerator, run: _Run) -> tuple[int, Path | None]:
    """(the step to start at, the checkpoint resumed from or None): accelerate's state, the step and the EMA."""
    resume = resolve_resume(run.output, config.resume_from_checkpoint)
    if resume is None:
        return 0, None
    accelerator.load_state(str(resume))
    global_step = int(json.loads((resume / "training_state.json").read_text())["global_step"])
    if run.ema is not None:
        run.ema.load(resume)
    logger.info("resumed from %s at step %d", resume, global_step)
    accelerator.print(f"resumed from {resume.name} at step {global_step}")
    return global_step, resume


def _run_epochs(config: TrainConfig, task: TrainingTask, accelerator: Accelerator, run: _Run, global_step: int) -> None:
    """Epochs from the one `global_step` falls in (its batches already seen skipped) until max_train_steps."""
    updates_per_epoch = math.ceil(len(run.loader) / config.gradient_accumulation_steps)
    first_epoch = global_step // updates_per_epoch
    skip_batches = (global_step % updates_per_epoch) * config.gradient_accumulation_steps
    num_epochs = math.ceil(config.max_train_steps / updates_per_epoch)
    indices_log = (run.output / f"sample_indices.rank{accelerator.process_index}.jsonl"
                   if config.log_sample_indices else None)
    for epoch in range(first_epoch, num_epochs):
        if global_step >= config.max_train_steps:
            break
        batches = accelerator.skip_first_batches(run.loader, skip_batches) if epoch == first_epoch else run.loader
        # accelerate's loaders push their own epoch counter into the sampler and dataset when iterated: set theirs
        batches.set_epoch(epoch)
        run.sampler.set_epoch(epoch)
        task.dataset.set_epoch(epoch)
        micro_losses = []  # the current update's micro-batch losses, (1,) each, on the device
        for batch in batches:
            step_loss = _micro_step(config, task, accelerator, run, batch, micro_losses, global_step)
            if indices_log is not None:
                with indices_log.open("a") as f:
                    f.write(json.dumps({"step": global_step + 1, "index": batch["index"].tolist()}) + "\n")
            if not accelerator.sync_gradients:
                continue
            global_step += 1
            if _after_update(config, task, accelerator, run, global_step, step_loss):
                break
        skip_batches = 0


def _micro_step(config: TrainConfig, task: TrainingTask, accelerator: Accelerator, run: _Run, batch: dict,
                micro_losses: list[torch.Tensor], global_step: int) -> float | None:
    """One micro-batch: loss, backward, and on an update's last micro-batch the clipped optimizer step; returns the
    update's loss (the mean over its micro-batches) on that last one, else None. A non-finite loss stops training
    before the bad update touches the weights."""
    step_loss = None
    with accelerator.accumulate(*run.modules.values()):
        loss = task.loss(run.modules, batch)
        micro_losses.append(loss.detach().float().reshape(1))
        if accelerator.sync_gradients:  # the update's last micro-batch: check before the weights change
            step_loss = _update_loss(accelerator, micro_losses)
            micro_losses.clear()
            if not math.isfinite(step_loss):
                last = resolve_resume(run.output, "latest")
                raise TrainingDiverged(f"loss is {step_loss} at step {global_step + 1}: training stopped; "
                                       f"last good checkpoint: {last or 'none yet'}")
        accelerator.backward(loss)
        if accelerator.sync_gradients and config.max_grad_norm > 0:
            accelerator.clip_grad_norm_(run.params, config.max_grad_norm)
        run.optimizer.step()
        run.lr_scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
    return step_loss


def _after_update(config: TrainConfig, task: TrainingTask, accelerator: Accelerator, run: _Run, step: int,
                  step_loss: float) -> bool:
    """EMA, the task's own after_update, the log row, checkpoint and validation of update `step`; True when the
    run is done."""
    if run.ema is not None:
        run.ema.update()
    if hasattr(task, "after_update"):
        task.after_update(run.modules)
    _log(accelerator, run.output, step, step_loss, run.lr_scheduler.get_last_lr()[0])
    done = step >= config.max_train_steps
    if step % config.checkpointing_steps == 0 or done:
        save_checkpoint(accelerator, config, step, run.ema)
    if config.validation_images and (step % config.validation_steps == 0 or done):
        _validate(accelerator, task, run.modules, config, step, run.ema)
    return done


def _start_logs(accelerator: Accelerator, config: TrainConfig, output: Path, resume: Path | None, step: int) -> None:
    """Keep the logs to one row per step: drop the rows past the step training restarts at (those it replays).
    Warn when `latest` finds no checkpoint although an earlier run logged steps here: training restarts at 0."""
    train_log = output / "train_log.jsonl"
    if accelerator.is_main_process:
        if resume is None and config.resume_from_checkpoint == "latest":
            logged = read_log(train_log)
            if logged:
                print(f"colordiff: warning: {output} has a train log up to step {max(r['step'] for r in logged)} "
                      "but no finished checkpoint; starting at step 0", file=sys.stderr)
        truncate_log(train_log, step)
    if config.log_sample_indices:  # each process owns its own file
        truncate_log(output / f"sample_indices.rank{accelerator.process_index}.jsonl", step)


def save_checkpoint(accelerator: Accelerator, config: TrainConfig, step: int, ema: EMA | None) -> None:
    """accelerate's save_state into checkpoint-<step>.tmp, then renamed: a checkpoint is whole or absent. Only
    then are the oldest removed beyond `checkpoints_total_limit`: a stop during the write keeps the previous one."""
    staging = staging_dir(config.output_dir, step)
    if accelerator.is_main_process:
        if staging.exists():
            shutil.rmtree(staging)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging), safe_serialization=True)
    if accelerator.is_main_process:
        (staging / "training_state.json").write_text(json.dumps({"global_step": step}))
        if ema is not None:
            ema.save(staging)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        final = publish(staging)
        rotate_checkpoints(config.output_dir, config.checkpoints_total_limit, newest=final)
    accelerator.wait_for_everyone()


def _log(accelerator: Accelerator, output: Path, step: int, loss: float, lr: float) -> None:
    """One row per step: `loss` is the step's mean over its micro-batches and processes (_update_loss)."""
    if accelerator.is_main_process:
        with (output / "train_log.jsonl").open("a") as f:
            f.write(json.dumps({"step": step, "loss": loss, "lr": lr}) + "\n")
    accelerator.log({"train/loss": loss, "train/lr": lr}, step=step)


def _validate(accelerator: Accelerator, task: TrainingTask, modules, config: TrainConfig, step: int, ema) -> None:
    """Colorize the validation images with the current (EMA, if kept) weights; save and log the grid."""
    if accelerator.is_main_process:
        if ema is not None:
            ema.swap()
        unwrapped = {k: accelerator.unwrap_model(m) for k, m in modules.items()}
        cuda = [accelerator.device] if accelerator.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):  # validation must not shift the training RNG
            grid = task.validate(unwrapped, config)
        if ema is not None:
            ema.swap()
        if grid is not None:
            path = Path(config.output_dir) / "validation" / f"step-{step:07d}.png"
            array = np.asarray(grid)
            write_image(path, array)
            for tracker in accelerator.trackers:
                if tracker.name == "tensorboard":
                    tracker.writer.add_image("validation", array, step, dataformats="HWC")
    accelerator.wait_for_everyone()
