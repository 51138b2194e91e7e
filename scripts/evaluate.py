"""Score a folder of colorized images against ground truths: the same job as `colordiff evaluate`.

    python scripts/evaluate.py --pred outputs/pred --gt data/gt --fid-weights weights-inception-2015-12-05-6726825d.pth
"""

from __future__ import annotations

import sys

from colordiff.cli import main as cli_main
from colordiff.devices import end_process_group


def main(argv: list[str] | None = None) -> int:
    return cli_main(["evaluate", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(end_process_group(main()))
