"""`main(argv)` for the training scripts: --config YAML files plus key=value overrides onto a schema."""

from __future__ import annotations

import argparse
import sys

from colordiff.config import ConfigError, load_config


def run_script(schema, train_main, description: str, argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", action="append", default=[], help="YAML recipe (repeatable; later files win)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override any key of the recipe")
    args = parser.parse_intermixed_args(argv)  # key=value overrides may come after flags
    try:
        config = load_config(schema, args.config, args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from colordiff.training.loop import TrainingDiverged

    try:
        final = train_main(config)
    except TrainingDiverged as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except FileNotFoundError as err:  # a missing data folder, base model or previous stage: a usage error
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {final}")
    return 0
