"""The `colordiff` console script. It only parses arguments and calls an application:

    colordiff colorize INPUT... -o OUT --model DIR_OR_HUB_ID [--config YAML] [options] [key=value ...]
    colordiff evaluate --pred DIR --gt DIR [options] [key=value ...]
    colordiff init-model OUT --tiny | --base SD15 [--method colordiff|seada]
    colordiff merge-decoder MODEL DECODER_MODEL -o OUT
    colordiff colorize-video INPUT... -o OUT --model M [--config YAML] [key=value ...]
    colordiff evaluate-video --pred OUT.mp4 [--gt COLOR.mp4] [--json FILE]
    colordiff demo --model M [--config YAML] [--host 127.0.0.1] [--port 7860] [key=value ...]
    accelerate launch -m colordiff.cli colorize ...      # files split across processes (GPUs)
"""

from __future__ import annotations

import argparse
import sys

from colordiff import __version__
from colordiff.cli_options import add_model_options, default_text
from colordiff.colorize import ColorizeConfig
from colordiff.config import ConfigError, dotlist_value, error_line, is_override, load_config
from colordiff.demo_cli import add_demo_parser, run_demo_command
from colordiff.devices import end_process_group
from colordiff.errors import EXIT_OK, EXIT_USAGE, UsageError
from colordiff.evaluate import EvalConfig
from colordiff.init_model import BASE_MODELS
from colordiff.video.cli import VIDEO_COMMANDS, add_video_parsers, run_video_command

COLORIZE_DEFAULTS, EVAL_DEFAULTS = ColorizeConfig(), EvalConfig()


def _colorize_parser(commands) -> None:
    d = COLORIZE_DEFAULTS
    p = commands.add_parser(
        "colorize", help="colorize image files and folders (recursive)",
        description="Colorize INPUT files and folders into OUT, mirroring relative paths. Settings: --config files, "
        "then the flags, then positional key=value overrides of ColorizeConfig's keys (colordiff/colorize.py).")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders, and key=value overrides")
    p.add_argument("-o", "--output-dir", dest="output_dir", help="output folder (required)")
    add_model_options(p, d, seed_help="with each file's relative path and sample index, fixes its output",
                      batch_help="images (files x samples) per U-Net batch")
    p.add_argument("--num-samples", dest="num_samples", type=int,
                   help=f"outputs per input, named _0 ... _N-1 when N > 1 {default_text(d.num_samples)}")
    p.add_argument("--keep-luminance", dest="keep_luminance", action=argparse.BooleanOptionalAction,
                   help=f"keep the input's exact Lab L; --no-keep-luminance returns the decoder's RGB "
                   f"{default_text(d.keep_luminance)}")
    p.add_argument("--save-priors", dest="save_priors", action="store_true", default=None,
                   help=f"write a JSON sidecar per input (caption, category, prompt, instances with masks) "
                   f"{default_text(d.save_priors)}")
    p.add_argument("--captions", metavar="FILE",
                   help="JSONL of per-image captions (as scripts/caption.py writes; \"caption_gray\" or "
                   "\"caption\" per \"path\") used as the caption prior instead of a captioner (default: none)")
    p.add_argument("--caption-key", dest="caption_key", metavar="KEY",
                   help=f"which caption of each --captions line, e.g. caption_color for a model trained on Des_c "
                   f"{default_text(d.caption_key)}")


def _init_parser(commands) -> None:
    p = commands.add_parser("init-model", help="write an untrained ColorDiff or SeAda model folder")
    p.add_argument("output", metavar="OUT", help="model folder to create")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--tiny", action="store_true",
                        help="tiny random components (tests, smoke runs; no download); --tiny or --base is required")
    source.add_argument("--base", help=f"Stable Diffusion 1.5 weights: a hub id, a local folder, or an alias "
                        f"({', '.join(f'{k} = {v}' for k, v in BASE_MODELS.items())}); --tiny or --base is required")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32",
                   help="weights dtype of the written folder (default: float32)")
    p.add_argument("--local-files-only", action="store_true", help="never contact the hub for --base (default: off)")
    p.add_argument("--seed", type=int, default=0, help="--tiny: the random initialisation (default: 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT (default: off)")
    p.add_argument("--method", choices=["colordiff", "seada"], default="colordiff",
                   help="which model: ColorDiff (paper 000) or SeAda (paper 001) (default: colordiff)")


def _evaluate_parser(commands) -> None:
    d = EVAL_DEFAULTS
    p = commands.add_parser(
        "evaluate", help="score a folder of colorized images against ground truths (colorfulness, ΔCF, PSNR, FID, ...)",
        description="Pair PRED and GT files by relative path (extension-insensitive) and compute the metrics; "
        "positional key=value arguments override EvalConfig's keys (colordiff/evaluate.py).")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--pred", help="folder of predictions (required)")
    p.add_argument("--gt", help="folder of ground truths (required)")
    p.add_argument("--metrics", nargs="+", help="any of colorfulness (with delta_cf), psnr, ssim, lpips, fid "
                   "(default: colorfulness psnr, plus fid when --fid-weights is given)")
    p.add_argument("--json", help="write the results here; they are printed either way (default: none)")
    p.add_argument("--csv", help="write per-image metrics here (default: none)")
    p.add_argument("--config", action="append", default=[], help="YAML settings, applied in order (repeatable)")
    p.add_argument("--fid-weights", dest="fid_weights", help="local Inception weights file for FID (default: none)")
    p.add_argument("--fid-variant", dest="fid_variant",
                   help=f"fidelity = torch-fidelity's FID, torchvision = CT2's script {default_text(d.fid_variant)}")
    p.add_argument("--size", type=int, help=f"evaluation side in pixels, 0 = native {default_text(d.protocol.size)}")
    p.add_argument("--crop", choices=["center", "stretch"], help=f"how images reach size x size "
                   f"{default_text(d.protocol.crop)}")
    p.add_argument("--resample", choices=["bicubic", "bilinear", "lanczos", "cv2"],
                   help=f"resize filter; cv2 = cv2.resize INTER_LINEAR as DDColor {default_text(d.protocol.resample)}")
    p.add_argument("--crop-border", dest="crop_border", type=int,
                   help=f"pixels cut from each border before PSNR and SSIM {default_text(d.protocol.crop_border)}")
    p.add_argument("--on-size-mismatch", dest="on_size_mismatch", choices=["error", "resize"],
                   help=f"a prediction whose size differs from its ground truth's {default_text(d.on_size_mismatch)}")
    p.add_argument("--batch-size", dest="batch_size", type=int, help=f"pairs per batch {default_text(d.batch_size)}")
    p.add_argument("--samples", type=int, help="score the per-pixel mean of N samples per image: PRED holds x_0 ... "
                   f"x_{{N-1}} (colorize --num-samples N), a/b averaged, L kept {default_text(d.samples)}")
    p.add_argument("--device", help=f"where FID and LPIPS run; auto = CUDA when available {default_text(d.device)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="colordiff", description="Diffusion-based automatic image colorization "
                                     "(ColorDiff and SeAda).")
    parser.add_argument("--version", action="version", version=f"colordiff {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    _colorize_parser(commands)
    _init_parser(commands)
    _evaluate_parser(commands)
    merge = commands.add_parser("merge-decoder", help="put a trained luminance-aware decoder into a model folder")
    merge.add_argument("model", metavar="MODEL", help="model folder (e.g. the trained U-Net's output_dir/model)")
    merge.add_argument("decoder_model", metavar="DECODER_MODEL", help="model folder holding the trained decoder")
    merge.add_argument("-o", "--output", required=True, help="the merged model folder to write (required)")
    add_video_parsers(commands)
    add_demo_parser(commands)
    return parser


FLAG_KEYS = [name for name in ColorizeConfig.__dataclass_fields__ if name != "inputs"]
EVAL_FLAGS = {"pred": "pred", "gt": "gt", "json": "json", "csv": "csv", "fid_weights": "fid_weights",
              "fid_variant": "fid_variant", "device": "device", "batch_size": "batch_size", "size": "protocol.size",
              "crop": "protocol.crop", "resample": "protocol.resample", "crop_border": "protocol.crop_border",
              "on_size_mismatch": "on_size_mismatch", "samples": "samples"}


def colorize_config(args: argparse.Namespace) -> ColorizeConfig:
    """--config files <- flags given on the command line <- key=value overrides."""
    overrides = [a for a in args.inputs if is_override(a)]
    flags = [f"{key}={dotlist_value(getattr(args, key))}" for key in FLAG_KEYS
             if getattr(args, key, None) is not None]
    inputs = [a for a in args.inputs if not is_override(a)]
    config = load_config(ColorizeConfig, args.config, flags + overrides)
    config.inputs = config.inputs + inputs
    if not config.inputs:
        raise ConfigError("no INPUT given")
    return config


def evaluate_config(args: argparse.Namespace) -> EvalConfig:
    """--config files <- flags <- key=value overrides (positional, or mixed into --metrics)."""
    metrics = [m for m in (args.metrics or []) if "=" not in m]
    overrides = [m for m in (args.metrics or []) if "=" in m] + list(args.overrides)  # `--metrics psnr size=64`
    bad = [o for o in overrides if not is_override(o)]
    if bad:
        raise ConfigError(f"unexpected arguments (expected key=value): {' '.join(bad)}")
    flags = [f"{key}={dotlist_value(getattr(args, name))}" for name, key in EVAL_FLAGS.items()
             if getattr(args, name, None) is not None]
    if metrics:
        flags.append(f"metrics=[{','.join(metrics)}]")
    return load_config(EvalConfig, args.config, flags + overrides)


def run(args: argparse.Namespace) -> int:
    """Call the application a parsed command names; returns its exit status."""
    if args.command == "colorize":
        from colordiff.colorize import run_colorize

        return run_colorize(colorize_config(args))
    if args.command == "init-model":
        from colordiff.init_model import run_init_model

        return run_init_model(args.output, tiny=args.tiny, base=args.base, dtype=args.dtype,
                              local_files_only=args.local_files_only, seed=args.seed, overwrite=args.overwrite,
                              method=args.method)
    if args.command == "evaluate":
        from colordiff.evaluate import run_evaluate

        return run_evaluate(evaluate_config(args))
    if args.command == "merge-decoder":
        from colordiff.pipelines.assemble import merge_decoder

        try:
            print(f"colordiff: wrote {merge_decoder(args.model, args.decoder_model, args.output)}", file=sys.stderr)
        except (OSError, ValueError) as err:
            raise UsageError(error_line(err)) from None
        return EXIT_OK
    if args.command in VIDEO_COMMANDS:
        return run_video_command(args)
    if args.command == "demo":
        return run_demo_command(args)
    return EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        # positionals may follow the options (`INPUT -o OUT key=value`); anything else unknown is an error
        takes_extra = args.command in ("colorize", "colorize-video", "demo")  # positionals after the options
        unknown = [a for a in extra if a.startswith("-") or not takes_extra]
        if unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        if takes_extra:
            args.inputs += extra
    except SystemExit as exit_:  # argparse's usage errors (status 2), --help and --version (status 0)
        return int(exit_.code or 0)
    try:
        return run(args)
    except (ConfigError, UsageError) as err:
        print(f"colordiff: error: {err}", file=sys.stderr)
        return EXIT_USAGE


def entry() -> int:
    """The `colordiff` console script: `main` on the command line's arguments, then `end_process_group`, exactly as
    `python -m colordiff.cli` runs (so `accelerate launch` may start either)."""
    return end_process_group(main())


if __name__ == "__main__":
    sys.exit(entry())
