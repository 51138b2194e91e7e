"""The settings every training script shares; key names follow diffusers' example scripts where one exists."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrainConfig:
    # model
    pretrained_model_name_or_path: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"  # SD1.5, or a ColorDiff model
    local_files_only: bool = False
    output_dir: str = "outputs/train"
    seed: int = 0
    # data: an ImageNet-style tree or flat folder (train_data_dir), or a file list (train_file_list)
    train_data_dir: str | None = None
    train_file_list: str | None = None
    text_source: str = "classname"  # classname (ImageNet synset folders) | captions | empty
    caption_file: str | None = None  # JSONL caption cache (scripts/caption.py)
    caption_key: str = "caption_gray"
    resolution: int = 512
    center_crop: bool = False
    resize_range: list[float] = field(default_factory=lambda: [1.0, 1.0])  # shorter side = resolution x U(low, high)
    random_flip: bool = True
    min_chroma: float = 3.0  # images whose mean Lab chroma is below this are already gray: dropped
    max_pixels: int = 100_000_000
    dataloader_num_workers: int = 0
    # optimisation
    train_batch_size: int = 16  # per process
    max_train_steps: int = 20_000
    gradient_accumulation_steps: int = 1
    learning_rate: float = 5e-5
    lr_scheduler: str = "constant"  # any diffusers.optimization scheduler name
    lr_warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"  # no | fp16 | bf16
    gradient_checkpointing: bool = False
    allow_tf32: bool = True
    use_ema: bool = False
    ema_decay: float = 0.9999
    # checkpoints: output_dir/checkpoint-<step>, written atomically, the oldest removed beyond the limit
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = None
    resume_from_checkpoint: str | None = None  # "latest" or a checkpoint folder
    # validation: colorize these images through the real pipeline every validation_steps
    validation_steps: int = 1000
    validation_images: list[str] = field(default_factory=lambda: ["examples/photos"])
    validation_inference_steps: int = 50
    validation_guidance_scale: float = 7.5
    report_to: str = "tensorboard"  # tensorboard | none
    log_sample_indices: bool = False  # write each process's training-sample indices (data-order debugging)
