"""Train ColorDiff's concat U-Net (000 Eq.2).

    accelerate launch scripts/train_unet.py --config configs/colordiff/unet.yaml [key=value ...]
"""

import sys

from colordiff.devices import end_process_group
from colordiff.training.cli import run_script
from colordiff.training.unet import TrainUNetConfig, main

if __name__ == "__main__":
    sys.exit(end_process_group(run_script(TrainUNetConfig, main, __doc__)))
