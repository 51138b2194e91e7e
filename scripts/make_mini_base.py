"""Build the miniature's stand-in for Stable Diffusion 1.5 from a folder of photos (colordiff/mini/base.py).

    python scripts/make_mini_base.py --config configs/mini/base.yaml data_dir=PHOTOS [key=value ...]
"""

import sys

from colordiff.mini.base import MiniBaseConfig, make_mini_base
from colordiff.training.cli import run_script

if __name__ == "__main__":
    sys.exit(run_script(MiniBaseConfig, make_mini_base, __doc__))
