"""Build an evaluation set from your copy of the originals: protocol-cropped ground truths (gt/), their gray inputs
(gray/) and the list of files used (files.txt), so that everybody evaluates on the same images.

    python scripts/prepare_eval.py --config configs/eval/imagenet_val5k.yaml --source /data/ILSVRC2012/val
    python scripts/prepare_eval.py --config configs/eval/cocostuff_val.yaml --source /data/coco/val2017
    python scripts/prepare_eval.py --config configs/eval/ade20k_val.yaml --source /data/ADEChallengeData2016

Re-running skips finished images. Keys of EvalSetConfig (colordiff/reproduce.py) can be overridden as key=value.
"""

from __future__ import annotations

import argparse
import sys

from colordiff.cli import EXIT_USAGE, UsageError, _dotlist_value
from colordiff.config import ConfigError, load_config
from colordiff.reproduce import EvalSetConfig, prepare_eval_set, repo_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    parser.add_argument("--config", action="append", default=[], help="configs/eval/<set>.yaml (repeatable)")
    parser.add_argument("--source", help="folder with the original images (searched recursively)")
    parser.add_argument("--out", dest="prepared_dir", help="where to write the prepared set (prepared_dir)")
    parser.add_argument("--overwrite", action="store_true", default=None, help="redo finished images")
    args = parser.parse_intermixed_args(argv)  # key=value overrides may come after flags
    flags = [f"{key}={_dotlist_value(getattr(args, key))}" for key in ("source", "prepared_dir", "overwrite")
             if getattr(args, key) is not None]
    try:
        config = load_config(EvalSetConfig, [repo_path(c) for c in args.config], flags + args.overrides)
        return prepare_eval_set(config)
    except (ConfigError, UsageError) as err:
        print(f"prepare_eval: error: {err}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
