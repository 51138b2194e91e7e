"""Does a base's text-to-image prior read its text? Its samples per category prompt, told apart by color
(colordiff/mini/prior_check.py).

    python scripts/prior_check.py base=outputs/mini/base data_dir=outputs/mini/photos/train \
        captions=outputs/mini/photos/captions.jsonl output_dir=outputs/mini/prior_check
"""

import sys

from colordiff.mini.prior_check import PriorCheckConfig, prior_check
from colordiff.training.cli import run_script

if __name__ == "__main__":
    sys.exit(run_script(PriorCheckConfig, prior_check, __doc__))
