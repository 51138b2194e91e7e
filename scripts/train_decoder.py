"""Train ColorDiff's luminance-aware decoder (000 Eq.6-7).

    accelerate launch scripts/train_decoder.py --config configs/colordiff/decoder.yaml [key=value ...]
"""

import sys

from colordiff.training.cli import run_script
from colordiff.training.decoder import TrainDecoderConfig, main

if __name__ == "__main__":
    sys.exit(run_script(TrainDecoderConfig, main, __doc__))
