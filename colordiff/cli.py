"""The `colordiff` console script: `colorize` folders of photos, `init-model` to build a model folder.

    colordiff colorize INPUT... -o OUT --model DIR_OR_HUB_ID [--config YAML] [options] [key=value ...]
    accelerate launch -m colordiff.cli colorize ...      # files split across processes (GPUs)
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field

from colordiff.config import ConfigError, error_line, is_override, load_config

EXIT_OK, EXIT_FAILURES, EXIT_USAGE = 0, 1, 2

BASE_MODELS = {"SD15": "stable-diffusion-v1-5/stable-diffusion-v1-5"}  # aliases accepted by `init-model --base`


@dataclass
class ColorizeConfig:
    """Settings of `colordiff colorize` (YAML keys; the flags are shortcuts for the same keys)."""

    model: str = "???"  # a model folder or hub id (required)
    output_dir: str = "???"  # required
    inputs: list[str] = field(default_factory=list)
    steps: int = 50  # DDIM steps (paper 000: T = 50)
    guidance_scale: float = 7.5
    seed: int = 0  # with the file's relative path and the sample index, fixes each output
    num_samples: int = 1
    resolution: int = 512
    batch_size: int = 4  # images (files x samples) per U-Net batch
    prompt: str | None = None  # None: the automatic text (category + caption priors), "" without them
    keep_luminance: bool = True
    device: str = "auto"  # auto: this process's accelerator, else cpu
    dtype: str = "auto"  # auto: bfloat16 on CUDA, float32 otherwise; or float32 / float16 / bfloat16
    overwrite: bool = False
    max_pixels: int = 100_000_000  # decompression-bomb guard for inputs
    local_files_only: bool = False  # never contact the hub for --model
    priors: str = "auto"  # auto (those the model records) | none | all | caption,category,segmentation (any subset)
    seg_strength: float = 0.3  # segmentation guidance strength s (paper 000: 0.3); 0 turns it off
    save_priors: bool = False  # write OUT/<name>.priors.json per input: caption, category, prompt, instances
    priors_config: str | None = None  # YAML naming the prior generators; None: the model's semantic_priors.yaml
    captions: str | None = None  # JSONL of per-image captions (scripts/caption.py's format) used instead of a captioner


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="colordiff", description="Diffusion-based automatic image colorization.")
    commands = parser.add_subparsers(dest="command", required=True)

    colorize = commands.add_parser(
        "colorize",
        help="colorize image files and folders (recursive)",
        description="Colorize INPUT files and folders into OUT, mirroring relative paths. Positional `key=value` "
        "arguments override config keys (see ColorizeConfig); they are applied after --config and the flags.",
    )
    colorize.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders, and key=value overrides")
    colorize.add_argument("-o", "--output-dir", dest="output_dir", help="output folder")
    colorize.add_argument("--model", help="model folder or hub id")
    colorize.add_argument("--config", action="append", default=[], help="YAML settings (repeatable)")
    colorize.add_argument("--steps", type=int)
    colorize.add_argument("--guidance-scale", dest="guidance_scale", type=float)
    colorize.add_argument("--seed", type=int)
    colorize.add_argument("--num-samples", dest="num_samples", type=int)
    colorize.add_argument("--resolution", type=int)
    colorize.add_argument("--batch-size", dest="batch_size", type=int)
    colorize.add_argument("--prompt")
    colorize.add_argument("--keep-luminance", dest="keep_luminance", action=argparse.BooleanOptionalAction)
    colorize.add_argument("--device")
    colorize.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"])
    colorize.add_argument("--overwrite", action="store_true", default=None, help="recompute finished outputs")
    colorize.add_argument("--local-files-only", dest="local_files_only", action="store_true", default=None)
    colorize.add_argument("--priors", choices=["auto", "none", "caption", "category", "segmentation", "all"],
                          help="semantic priors from the generators the model records (default auto: all of them)")
    colorize.add_argument("--seg-strength", dest="seg_strength", type=float, help="segmentation guidance s in [0, 1]")
    colorize.add_argument("--save-priors", dest="save_priors", action="store_true", default=None,
                          help="write a JSON sidecar per input (caption, category, prompt, instances with masks)")
    colorize.add_argument("--captions", metavar="FILE",
                          help="JSONL of per-image captions (as scripts/caption.py writes; \"caption_gray\" or "
                          "\"caption\" per \"path\") used as the caption prior instead of running a captioner")

    init = commands.add_parser("init-model", help="write an untrained ColorDiff model folder")
    init.add_argument("output", metavar="OUT", help="model folder to create")
    source = init.add_mutually_exclusive_group(required=True)
    source.add_argument("--tiny", action="store_true", help="tiny random components (tests, smoke runs; no download)")
    source.add_argument("--base", help="Stable Diffusion 1.5 weights: SD15, a hub id or a local folder")
    init.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    init.add_argument("--local-files-only", action="store_true", help="never contact the hub for --base")
    init.add_argument("--seed", type=int, default=0, help="--tiny: the random initialisation")
    init.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    init.add_argument("--method", choices=["colordiff", "seada"], default="colordiff",
                      help="which model: ColorDiff (paper 000) or SeAda (paper 001)")

    evaluate = commands.add_parser(
        "evaluate",
        help="score a folder of colorized images against ground truths (colorfulness, ΔCF, PSNR, FID, ...)",
        description="Pair PRED and GT files by relative path (extension-insensitive) and compute the metrics; "
        "see EvalConfig in colordiff/evaluate.py for the keys that positional key=value arguments override.",
    )
    evaluate.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    evaluate.add_argument("--pred", help="folder of predictions")
    evaluate.add_argument("--gt", help="folder of ground truths")
    evaluate.add_argument("--metrics", nargs="+", help="colorfulness (with delta_cf), psnr, ssim, lpips, fid")
    evaluate.add_argument("--json", help="write the results here (they are printed either way)")
    evaluate.add_argument("--csv", help="write per-image metrics here")
    evaluate.add_argument("--config", action="append", default=[], help="YAML settings (repeatable)")
    evaluate.add_argument("--fid-weights", dest="fid_weights", help="local Inception weights file for FID")
    evaluate.add_argument("--fid-variant", dest="fid_variant", help="fidelity (standard FID) or torchvision (CT2)")
    evaluate.add_argument("--size", type=int, help="evaluation size (protocol.size; 0 = native)")
    evaluate.add_argument("--crop", choices=["center", "stretch"], help="protocol.crop")
    evaluate.add_argument("--on-size-mismatch", dest="on_size_mismatch", choices=["error", "resize"])
    evaluate.add_argument("--batch-size", dest="batch_size", type=int)
    evaluate.add_argument("--device")
    merge = commands.add_parser("merge-decoder", help="put a trained luminance-aware decoder into a model folder")
    merge.add_argument("model", metavar="MODEL", help="model folder (e.g. the trained U-Net's output_dir/model)")
    merge.add_argument("decoder_model", metavar="DECODER_MODEL", help="model folder holding the trained decoder")
    merge.add_argument("-o", "--output", required=True, help="the merged model folder to write")
    return parser


FLAG_KEYS = [name for name in ColorizeConfig.__dataclass_fields__ if name != "inputs"]


def colorize_config(args: argparse.Namespace) -> ColorizeConfig:
    """--config files <- flags given on the command line <- key=value overrides."""
    overrides = [a for a in args.inputs if is_override(a)]
    flags = [f"{key}={_dotlist_value(getattr(args, key))}" for key in FLAG_KEYS
             if getattr(args, key, None) is not None]
    inputs = [a for a in args.inputs if not is_override(a)]
    config = load_config(ColorizeConfig, args.config, flags + overrides)
    config.inputs = config.inputs + inputs
    if not config.inputs:
        raise ConfigError("no INPUT given")
    return config


def _dotlist_value(value) -> str:
    if isinstance(value, str):  # quote so that omegaconf keeps strings like "1e5" or "null" as written
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return str(value).lower() if isinstance(value, bool) else str(value)


class UsageError(ValueError):
    """A command-line mistake (missing input path, unusable model folder): exit status 2."""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        # positionals may follow the options (`INPUT -o OUT key=value`); anything else unknown is an error
        unknown = [a for a in extra if a.startswith("-") or args.command != "colorize"]
        if unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        if args.command == "colorize":
            args.inputs += extra
    except SystemExit as exit_:  # argparse's usage errors (status 2) and --help (status 0)
        return int(exit_.code or 0)
    try:
        if args.command == "colorize":
            from colordiff.colorize import run_colorize

            return run_colorize(colorize_config(args))
        if args.command == "init-model":
            from colordiff.colorize import run_init_model

            return run_init_model(args.output, tiny=args.tiny, base=BASE_MODELS.get(args.base, args.base),
                                  dtype=args.dtype, local_files_only=args.local_files_only, seed=args.seed,
                                  overwrite=args.overwrite, method=args.method)
        if args.command == "evaluate":
            from colordiff.evaluate import evaluate_config, run_evaluate

            return run_evaluate(evaluate_config(args))
        if args.command == "merge-decoder":
            from colordiff.pipelines.assemble import merge_decoder

            try:
                print(f"colordiff: wrote {merge_decoder(args.model, args.decoder_model, args.output)}", file=sys.stderr)
            except (OSError, ValueError) as err:
                raise UsageError(error_line(err)) from None
            return EXIT_OK
    except (ConfigError, UsageError) as err:
        print(f"colordiff: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
