"""Training SeAda in stages (paper 001, Sec. 3.2, 3.4 and 4.1 "Implementation details").

Stage 0: ControlNet pretraining (mapper + ControlNet; "following ControlNet"): gray control image, text = e_g.
Stage I: controlled T2I model frozen; control image = the real COLOR image; adapter parts (a) + (c) train with
         L_e = L_r + 0.5 L_s (001 Eq.4-6).
Stage II: adapter frozen; control image = gray; ControlNet (with mapper) + RCA train with L_s (001 Eq.4).
Stage III: adapter, ControlNet and RCA train together with L_s.
Each stage after 0 starts from the previous stage's model folder (`pretrained_model_name_or_path`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from colordiff.data import load_captions
from colordiff.devices import mixed_precision_dtype
from colordiff.errors import UsageError
from colordiff.models.semantic_adapter import reconstruction_loss
from colordiff.pipelines.seada_pipeline import SeAdaPipeline
from colordiff.schedulers import scheduler_prediction_type
from colordiff.training.common import (
    build_dataset,
    how_trained,
    noise_schedulers,
    place_frozen,
    restore_frozen,
    training_card,
    validation_grid,
)
from colordiff.training.config import NoiseScheduleConfig, TrainConfig, sample_timesteps
from colordiff.training.loop import make_accelerator, train
from colordiff.training.lora import LoraSettings, add_lora, fused, save_lora_file
from colordiff.training.losses import diffusion_target, weighted_mse

STAGE_NAMES = {0: "0 (ControlNet pretraining)", 1: "I", 2: "II", 3: "III"}


@dataclass
class TrainSeAdaConfig(LoraSettings, NoiseScheduleConfig, TrainConfig):
    stage: int = 0  # 0, 1 (I), 2 (II) or 3 (III)
    output_dir: str = "outputs/seada_stage0"
    text_source: str = "captions"  # Des_g from the caption cache (caption_key); "empty" for smoke runs
    caption_key: str = "caption_gray"
    color_caption_key: str = "caption_color"  # Des_c, for L_r in stage I
    learning_rate: float = 1e-5
    train_batch_size: int = 32
    conditioning_dropout: float = 0.05  # Des_g replaced by "" (classifier-free guidance); paper silent
    lambda_r: float | None = None  # weight of L_r (001 Eq.5); None: 1 in stage I, 0 otherwise (001 Eq.6)
    lambda_s: float | None = None  # weight of L_s (001 Eq.4); None: 0.5 in stage I (001 Eq.6), 1 otherwise
    reconstruction_target: str = "e_g"  # L_r = MSE(e_c, e_g) as printed; "e_r" for MSE(e_c, e_r)
    adapter_parts: str = "abc"  # Table 3 (applied in stage I): "a", "ab" or "abc"
    use_rca: bool = True  # Table 4: false removes the RCA blocks (applied in stage II / III)
    mapper_channels: int = 4  # C_f, when stage 0 builds the model from Stable Diffusion
    rca_head_dim: int = 64
    # lora_rank (LoraSettings) > 0: a LoRA on the ControlNet's copy of SD's encoder; the modules SeAda adds to SD
    # (mapper, widened conv_in, zero convs, RCA) train in full; the adapter (stages I / III) always trains in full

    def config_checks(self):
        yield from super().config_checks()
        if self.stage == 1 and self.lora_rank > 0:
            yield "lora_rank", ("must be 0 in stage 1 (I): it trains only the semantic adapter, which has no LoRA "
                                f"option, got {self.lora_rank}")


def control_fully_trained(control, rca: bool) -> list[str]:
    """The control model's modules that train in full beside a LoRA: the ones SeAda adds to Stable Diffusion's
    encoder copy (no SD weights to adapt: the mapper, conv_in widened for c_f, the zero convs) and, when the stage
    trains them, the RCA blocks."""
    net = control.controlnet
    names = ["mapper", "controlnet.conv_in", "controlnet.controlnet_mid_block"]
    names += [f"controlnet.controlnet_down_blocks.{i}" for i in range(len(net.controlnet_down_blocks))]
    if rca and control.rca is not None:
        names += [f"rca.{i}" for i in range(len(control.rca))]
    return names


def stage_plan(stage: int) -> dict:
    """What trains, what the mapper sees and which text embedding conditions the U-Net, per stage."""
    plans = {
        0: {"adapter": False, "control": True, "rca": False, "control_image": "gray", "text": "e_g"},
        1: {"adapter": True, "control": False, "rca": False, "control_image": "color", "text": "e_r"},
        2: {"adapter": False, "control": True, "rca": True, "control_image": "gray", "text": "e_r"},
        3: {"adapter": True, "control": True, "rca": True, "control_image": "gray", "text": "e_r"},
    }
    if stage not in plans:
        raise ValueError(f"stage must be 0, 1, 2 or 3, got {stage}")
    return plans[stage]


def load_stage_input(config: TrainSeAdaConfig) -> SeAdaPipeline:
    """Stage 0: a SeAda folder, or SD1.5 weights made into an untrained SeAda model; later stages: the previous
    stage's SeAda model folder (a clear error when it is missing)."""
    import diffusers
    import transformers

    from colordiff.pipelines import load_pipeline, pipeline_class_for
    from colordiff.pipelines.registry import SD_COMPONENTS, guarded_load

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    source = config.pretrained_model_name_or_path
    if config.stage > 0 and not (Path(source) / "model_index.json").is_file():
        raise FileNotFoundError(f"{source}: stage {STAGE_NAMES[config.stage]} starts from the stage "
                                f"{STAGE_NAMES[config.stage - 1]} model folder, which is missing; run that stage "
                                "first (or set pretrained_model_name_or_path)")
    try:
        cls = pipeline_class_for(source, local_files_only=config.local_files_only)
    except ValueError:
        cls = None  # a Stable Diffusion folder
    if cls is SeAdaPipeline:
        return load_pipeline(source, local_files_only=config.local_files_only)
    if config.stage > 0:
        raise ValueError(f"{source}: not a SeAda model folder; stage {STAGE_NAMES[config.stage]} needs the previous "
                         "stage's output")
    return guarded_load(source, lambda: SeAdaPipeline.from_stable_diffusion(
        source, local_files_only=config.local_files_only, mapper_channels=config.mapper_channels,
        use_rca=config.use_rca, rca_head_dim=config.rca_head_dim), SD_COMPONENTS,
        local_files_only=config.local_files_only)


def check_same_schedule(config: TrainSeAdaConfig, pipe: SeAdaPipeline) -> None:
    """A later stage continues the previous stage's noise schedule: its control model was trained for it."""
    before = (bool(pipe.scheduler.config.get("rescale_betas_zero_snr", False)),
              pipe.control.config.get("prediction_type", "epsilon"))
    if before != (config.zero_terminal_snr, config.prediction_type):
        raise UsageError(f"{config.pretrained_model_name_or_path}: trained with zero_terminal_snr={before[0]}, "
                         f"prediction_type={before[1]}; stage {STAGE_NAMES[config.stage]} must keep them, got "
                         f"zero_terminal_snr={config.zero_terminal_snr}, prediction_type={config.prediction_type} "
                         "(give every stage the same settings, e.g. --config configs/seada/zero_snr.yaml)")


def check_frozen_prediction_type(config: TrainSeAdaConfig, pipe: SeAdaPipeline) -> None:
    """Stage 0 over a base: warns when the stages are to learn another target than the frozen U-Net predicts (its
    scheduler's prediction_type). The control model's residuals add to that U-Net's features, so they must turn its
    whole prediction into the other target (on the color-rule world the stages learned with the v target over a v
    prior; a target unlike the prior's is not measured)."""
    frozen = scheduler_prediction_type(pipe.scheduler)
    if frozen != config.prediction_type:
        warnings.warn(f"{config.pretrained_model_name_or_path}: its U-Net predicts {frozen} and stays frozen in every "
                      f"SeAda stage, but the stages learn prediction_type={config.prediction_type}: the control model "
                      f"has to turn the frozen prediction into the other target (prediction_type={frozen} matches it)",
                      UserWarning, stacklevel=2)


class ColorCaptions(Dataset):
    """Adds Des_c ("text_color") from the caption cache to each training example; Des_g is "text"."""

    def __init__(self, base, captions: dict[str, str] | None):
        self.base, self.captions = base, captions

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict:
        item = self.base[index]
        relative = self.base.examples[index].relative
        if self.captions is not None and relative not in self.captions:
            raise KeyError(f"{relative}: no color caption in the caption cache")
        item["text_color"] = "" if self.captions is None else self.captions[relative]
        return item


class SeAdaTask:
    """One SeAda stage as a TrainingTask: the stage plan decides what trains; SD's U-Net and VAE never do."""

    def __init__(self, config: TrainSeAdaConfig, accelerator):
        self.config, self.accelerator, self.plan = config, accelerator, stage_plan(config.stage)
        self.pipe = pipe = load_stage_input(config)
        if config.stage == 1:
            if config.adapter_parts not in ("a", "ab", "abc"):
                raise ValueError(f"adapter_parts must be 'a', 'ab' or 'abc', got {config.adapter_parts!r}")
            if "c" not in config.adapter_parts and pipe.adapter.trainable_embedding is not None:
                pipe.adapter.remove_trainable_embedding()
        if not config.use_rca and pipe.control.rca is not None:
            pipe.control.remove_rca()
        stage_one = config.stage == 1
        self.lambda_r = config.lambda_r if config.lambda_r is not None else (1.0 if stage_one else 0.0)
        self.lambda_s = config.lambda_s if config.lambda_s is not None else (0.5 if stage_one else 1.0)
        if "b" not in config.adapter_parts or pipe.adapter.color_encoder is None:
            self.lambda_r = 0.0  # part (b) switched off: no L_r
        if config.stage > 0:
            check_same_schedule(config, pipe)
        else:
            check_frozen_prediction_type(config, pipe)
        self.noise_scheduler, self.scheduler = noise_schedulers(config, pipe.scheduler)
        # the network records what it predicts: a pipeline refuses a scheduler set for another prediction type
        pipe.control.register_to_config(prediction_type=self.noise_scheduler.config.prediction_type)
        self.weight_dtype = mixed_precision_dtype(accelerator.mixed_precision)
        self._set_trainable()
        base = build_dataset(config, accelerator)
        colors = (load_captions(config.caption_file, config.color_caption_key)
                  if config.text_source == "captions" and self.lambda_r > 0 else None)
        self.dataset = ColorCaptions(base, colors)

    def _set_trainable(self) -> None:
        pipe, plan, device = self.pipe, self.plan, self.accelerator.device
        self.kept = {}  # the frozen parts' exact weights, restored for export
        for frozen in (pipe.vae, pipe.unet):
            place_frozen(frozen.requires_grad_(False).eval(), device, self.weight_dtype, self.kept)
        adapter, control = pipe.adapter, pipe.control
        adapter.requires_grad_(plan["adapter"]).train(plan["adapter"])
        if adapter.color_encoder is not None:
            adapter.color_encoder.requires_grad_(False).eval()  # part (b) is always frozen
        control.requires_grad_(plan["control"]).train(plan["control"])
        if control.rca is not None:
            control.rca.requires_grad_(plan["control"] and plan["rca"])
        if plan["control"] and self.config.lora_rank > 0:
            add_lora(control, self.config, fully_trained=control_fully_trained(control, plan["rca"]),
                     within=["controlnet"])
        for module, trains in ((adapter, plan["adapter"]), (control, plan["control"])):
            place_frozen(module, device, None if trains else self.weight_dtype, self.kept)
            if trains and self.config.gradient_checkpointing:
                module.enable_gradient_checkpointing()
        if self.config.gradient_checkpointing:
            pipe.unet.enable_gradient_checkpointing()

    def trainable(self) -> dict[str, nn.Module]:
        return {name: getattr(self.pipe, name) for name in ("adapter", "control") if self.plan[name]}

    def loss(self, modules: dict[str, nn.Module], batch: dict) -> torch.Tensor:
        """001 Eq.6 in stage I (lambda_r L_r + lambda_s L_s), 001 Eq.4 (L_s) in the other stages."""
        device, vae, pipe = self.accelerator.device, self.pipe.vae, self.pipe
        adapter, control = modules.get("adapter", pipe.adapter), modules.get("control", pipe.control)
        with torch.no_grad():
            color = batch["pixel_values"].to(device, self.weight_dtype)  # (B, 3, H, W) in [-1, 1]
            latents = vae.encode(color).latent_dist.sample().float() * vae.config.scaling_factor  # (B, 4, h, w)
        batch_size = latents.shape[0]
        drop = torch.rand(batch_size) < self.config.conditioning_dropout
        gray_ids = pipe.tokenize(["" if d else t for d, t in zip(drop.tolist(), batch["text"], strict=True)])
        color_ids = pipe.tokenize(batch["text_color"]) if self.lambda_r > 0 else None
        with torch.set_grad_enabled(self.plan["adapter"]):
            out = adapter(gray_ids.to(device), None if color_ids is None else color_ids.to(device))
        text_embeds = out.e_g if self.plan["text"] == "e_g" else out.e_r  # (B, L, d)
        key = "pixel_values" if self.plan["control_image"] == "color" else "gray_values"
        control_image = (batch[key].to(device) + 1.0) / 2.0  # (B, 3, H, W) in [0, 1]: what the mapper sees
        noise = torch.randn(latents.shape, device=latents.device, dtype=latents.dtype)
        timesteps = sample_timesteps(self.config, self.noise_scheduler.config.num_train_timesteps, batch_size, device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)  # z_t
        dtype = self.weight_dtype if not self.plan["control"] else next(control.parameters()).dtype
        prediction = control(pipe.unet, noisy.to(dtype), timesteps, text_embeds.to(dtype), control_image.to(dtype),
                             use_rca=self.plan["rca"]).sample
        target = diffusion_target(self.noise_scheduler, latents, noise, timesteps)  # eps (001 Eq.4), or v
        loss = self.lambda_s * weighted_mse(prediction, target, self.noise_scheduler, timesteps,  # L_s, 001 Eq.4
                                            self.config.loss_weighting)
        if self.lambda_r > 0:
            loss = loss + self.lambda_r * reconstruction_loss(out, self.config.reconstruction_target)  # L_r, 001 Eq.5
        return loss

    def validate(self, modules: dict[str, nn.Module], config: TrainConfig):
        return validation_grid(self._pipeline(modules), config)

    def export(self, modules: dict[str, nn.Module], path: Path) -> None:
        """The model folder (LoRA fused); with lora_rank > 0 also output_dir/lora/, the diffusers LoRA file."""
        from colordiff.pipelines.assemble import save_pipeline_atomically

        lora_file, control = None, modules.get("control")
        if control is not None and self.config.lora_rank > 0:
            lora_file = save_lora_file(path.parent / "lora", {"control": control})
            modules = {**modules, "control": fused(control)}
        pipe = self._pipeline(modules)
        for part in (pipe.vae, pipe.unet, pipe.control, pipe.adapter):
            restore_frozen(part, self.kept)
        save_pipeline_atomically(pipe, path, card=training_card(self.config, self._trained(), lora_file))

    def _trained(self) -> dict[str, str]:
        """{component: how this stage trained it}, for the model card."""
        stage, config = f"stage {STAGE_NAMES[self.config.stage]}: ", self.config
        trained = {}
        if self.plan["control"]:
            parts = "mapper, conv_in, zero convs" + (" and RCA" if self.plan["rca"] else "")
            trained["control"] = stage + how_trained(config, "train_seada.py", lora_also=f" ({parts} in full)")
        if self.plan["adapter"]:
            trained["adapter"] = stage + f"parts (a) + (c), full fine-tune, {config.max_train_steps} steps"
        return trained

    def _pipeline(self, modules) -> SeAdaPipeline:
        pipe = self.pipe
        return SeAdaPipeline(vae=pipe.vae, unet=pipe.unet, control=modules.get("control", pipe.control),
                             adapter=modules.get("adapter", pipe.adapter), tokenizer=pipe.tokenizer,
                             scheduler=self.scheduler)


def main(config: TrainSeAdaConfig) -> Path:
    accelerator = make_accelerator(config)
    return train(config, SeAdaTask(config, accelerator), accelerator)
