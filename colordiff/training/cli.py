"""`main(argv)` for the training scripts: --config YAML files plus key=value overrides onto a schema."""

from __future__ import annotations

import argparse
import os
import sys

from colordiff.config import ConfigError, error_line, load_config
from colordiff.errors import EXIT_FAILURES, EXIT_USAGE, UsageError


def _first_process() -> bool:
    """Whether this is the first process of a launch (or the only one): a usage error is the same on every
    process, so it is reported once."""
    return int(os.environ.get("RANK", "0")) == 0


def run_script(schema, train_main, description: str, argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", action="append", default=[], help="YAML recipe (repeatable; later files win)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override any key of the recipe")
    args = parser.parse_intermixed_args(argv)  # key=value overrides may come after flags
    try:
        config = load_config(schema, args.config, args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    from colordiff.training.loop import TrainingDiverged

    try:
        final = train_main(config)
    except TrainingDiverged as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILURES
    # a missing data folder, base model or previous stage, a training set with no usable image: usage errors
    except (FileNotFoundError, UsageError) as err:
        if _first_process():
            print(f"error: {error_line(err)}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote {final}")
    return 0
