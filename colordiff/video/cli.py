"""Argument parsers of `colordiff colorize-video` and `colordiff evaluate-video` (imported by colordiff.cli).

Settings: --config files, then the flags, then positional key=value overrides of VideoConfig's keys
(colordiff/video/config.py), as for `colordiff colorize`.
"""

from __future__ import annotations

import argparse

from colordiff.cli_options import add_model_options, default_text
from colordiff.config import ConfigError, dotlist_value, is_override, load_config
from colordiff.video.config import FLOW_METHODS, FORMATS, EvalVideoConfig, VideoConfig

VIDEO_COMMANDS = ("colorize-video", "evaluate-video")
D = VideoConfig()

# flag dest -> config key
COLORIZE_FLAGS = {
    "output_dir": "output_dir", "model": "model", "steps": "steps", "scheduler": "scheduler",
    "guidance_scale": "guidance_scale", "seed": "seed", "resolution": "resolution", "batch_size": "batch_size",
    "prompt": "prompt", "device": "device", "dtype": "dtype", "overwrite": "overwrite",
    "local_files_only": "local_files_only", "priors": "priors", "seg_strength": "seg_strength",
    "temporal": "temporal", "format": "output.format", "lossless": "output.lossless", "crf": "output.crf",
    "keyframe_interval": "keyframes.interval", "flow": "flow.method", "raft_weights": "flow.raft_weights",
    "smooth": "smoothing.enabled", "shot_threshold": "shots.threshold",
}
EVAL_FLAGS = {"pred": "pred", "gt": "gt", "json": "json", "flow": "flow", "raft_weights": "raft_weights",
              "fps": "fps"}


def add_video_parsers(commands) -> None:
    """Add the two video subcommands to `commands` (argparse subparsers). Unknown positionals land in args.inputs."""
    p = commands.add_parser(
        "colorize-video", help="colorize videos and folders of numbered frames, without flicker",
        description="Colorize INPUT videos (MP4, MOV, MKV, AVI, WebM, ...) and frame folders into OUT: shots, "
        "keyframes colorized by the model, chroma carried along optical flow. Settings: --config files, then "
        "the flags, then positional key=value overrides of VideoConfig's keys (colordiff/video/config.py); "
        "see docs/video.md.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="video files, frame folders, and key=value overrides")
    p.add_argument("-o", "--output-dir", dest="output_dir", help="output folder (required)")
    add_model_options(p, D, seed_help="with the clip's path and the shot index, fixes a shot",
                      batch_help="frames per model call with --temporal none")
    p.add_argument("--temporal", choices=["none", "flow"],
                   help=f"flow: keyframes + propagation; none: every frame alone {default_text(D.temporal)}")
    p.add_argument("--format", choices=list(FORMATS),
                   help=f"output container; auto = the input's own (frames folders: frames) "
                   f"{default_text(D.output.format)}")
    p.add_argument("--lossless", action="store_true", default=None,
                   help=f"FFV1 RGB in MKV instead of H.264 {default_text(D.output.lossless)}")
    p.add_argument("--crf", type=int, help=f"H.264 / VP9 constant rate factor {default_text(D.output.crf)}")
    p.add_argument("--keyframe-interval", dest="keyframe_interval", type=int,
                   help=f"at most this many frames between model calls {default_text(D.keyframes.interval)}")
    p.add_argument("--flow", choices=list(FLOW_METHODS), help=f"optical flow {default_text(D.flow.method)}")
    p.add_argument("--raft-weights", dest="raft_weights",
                   help="local safetensors file of torchvision's RAFT, for --flow raft (default: none)")
    p.add_argument("--smooth", action="store_true", default=None,
                   help=f"temporal smoothing of a/b along the flow {default_text(D.smoothing.enabled)}")
    p.add_argument("--shot-threshold", dest="shot_threshold", type=float,
                   help=f"luma change that makes a cut, in (0, 1] {default_text(D.shots.threshold)}")

    e = commands.add_parser(
        "evaluate-video", help="flicker of a colorized video (temporal warping error), and colorfulness / PSNR",
        description="The temporal warping error of the chroma between consecutive frames (Lai et al. 2018), flow "
        "from the luma, occlusions masked; with --gt also per-frame colorfulness, delta_cf and PSNR.")
    e.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides of EvalVideoConfig's keys")
    e.add_argument("--pred", help="the colorized video or frames folder (required)")
    e.add_argument("--gt", help="the color original (default: none)")
    e.add_argument("--json", help="write the results here; they are printed either way (default: none)")
    e.add_argument("--flow", choices=list(FLOW_METHODS), help=f"optical flow {default_text(EvalVideoConfig().flow)}")
    e.add_argument("--raft-weights", dest="raft_weights",
                   help="local safetensors file of torchvision's RAFT, for --flow raft (default: none)")
    e.add_argument("--fps", type=float, help="frame rate of frames folders (required for them; default: none)")
    e.add_argument("--config", action="append", default=[], help="YAML settings, applied in order (repeatable)")


def _flags(args: argparse.Namespace, table: dict) -> list[str]:
    return [f"{key}={dotlist_value(getattr(args, name))}" for name, key in table.items()
            if getattr(args, name, None) is not None]


def video_config(args: argparse.Namespace) -> VideoConfig:
    """--config files <- flags given on the command line <- key=value overrides."""
    overrides = [a for a in args.inputs if is_override(a)]
    config = load_config(VideoConfig, args.config, _flags(args, COLORIZE_FLAGS) + overrides)
    config.inputs = config.inputs + [a for a in args.inputs if not is_override(a)]
    if not config.inputs:
        raise ConfigError("no INPUT given")
    return config


def eval_video_config(args: argparse.Namespace) -> EvalVideoConfig:
    bad = [o for o in args.overrides if not is_override(o)]
    if bad:
        raise ConfigError(f"unexpected arguments (expected key=value): {' '.join(bad)}")
    return load_config(EvalVideoConfig, args.config, _flags(args, EVAL_FLAGS) + list(args.overrides))


def run_video_command(args: argparse.Namespace) -> int:
    """Run the parsed video subcommand; returns its exit status."""
    if args.command == "colorize-video":
        from colordiff.video.job import run_colorize_video

        return run_colorize_video(video_config(args))
    from colordiff.video.evaluate import run_evaluate_video

    return run_evaluate_video(eval_video_config(args))
