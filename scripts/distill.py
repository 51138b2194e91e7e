"""Distill a trained ColorDiff model into a few-step one (latent consistency distillation, LCM).

    accelerate launch scripts/distill.py --config configs/colordiff/distill_lcm.yaml [key=value ...]
"""

import sys

from colordiff.devices import end_process_group
from colordiff.training.cli import run_script
from colordiff.training.distill import DistillConfig, main

if __name__ == "__main__":
    sys.exit(end_process_group(run_script(DistillConfig, main, __doc__)))
