"""The command-line options that `colordiff colorize` and `colordiff colorize-video` share: one model, how it samples,
which priors guide it. Each help line ends with the default of the settings object given, so `--help` stays true.
"""

from __future__ import annotations

from colordiff.schedulers import SCHEDULERS

PRIORS_CHOICES = ["auto", "none", "caption", "category", "segmentation", "all"]


def default_text(value) -> str:
    return f"(default: {value!r})" if isinstance(value, str) else f"(default: {value})"


def add_model_options(p, d, *, seed_help: str, batch_help: str) -> None:
    """--model, --config and the sampling, prior and device flags, with defaults read from the settings `d`
    (a ColorizeConfig or a VideoConfig: both carry these keys)."""
    p.add_argument("--model", help="model folder or hub id (required)")
    p.add_argument("--config", action="append", default=[], help="YAML settings, applied in order (repeatable)")
    p.add_argument("--steps", type=int, help=f"sampling steps (paper 000: DDIM, 50) {default_text(d.steps)}")
    p.add_argument("--scheduler", choices=list(SCHEDULERS),
                   help="sampler, built from the model's own scheduler config (default: the model folder's, DDIM "
                   "for the models colordiff writes)")
    p.add_argument("--guidance-scale", dest="guidance_scale", type=float,
                   help=f"classifier-free guidance scale {default_text(d.guidance_scale)}")
    p.add_argument("--seed", type=int, help=f"{seed_help} {default_text(d.seed)}")
    p.add_argument("--resolution", type=int, help=f"working side in pixels (a multiple of 8), aspect kept, sides "
                   f"rounded to the model's size multiple (64 for SD1.5) {default_text(d.resolution)}")
    p.add_argument("--batch-size", dest="batch_size", type=int, help=f"{batch_help} {default_text(d.batch_size)}")
    p.add_argument("--prompt", help="text condition replacing the automatic one (default: caption and category "
                   "priors when the model records them, else \"\")")
    p.add_argument("--device", help=f"cpu, cuda, cuda:N; auto = this process's accelerator, else cpu "
                   f"{default_text(d.device)}")
    p.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"],
                   help=f"auto = bfloat16 on CUDA, float32 otherwise {default_text(d.dtype)}")
    p.add_argument("--overwrite", action="store_true", default=None,
                   help=f"recompute finished outputs {default_text(d.overwrite)}")
    p.add_argument("--local-files-only", dest="local_files_only", action="store_true", default=None,
                   help=f"never contact the hub for --model {default_text(d.local_files_only)}")
    p.add_argument("--priors", choices=PRIORS_CHOICES,
                   help=f"semantic priors; auto = every generator the model records {default_text(d.priors)}")
    p.add_argument("--seg-strength", dest="seg_strength", type=float,
                   help=f"segmentation guidance strength s in [0, 1]; 0 turns it off {default_text(d.seg_strength)}")
