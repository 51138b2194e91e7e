"""Train ColorDiff's luminance-aware decoder (000 Eq.6-7).

    accelerate launch scripts/train_decoder.py --config configs/colordiff/decoder.yaml [key=value ...]
"""

import sys

from colordiff.devices import end_process_group
from colordiff.training.cli import run_script
from colordiff.training.decoder import TrainDecoderConfig, main

if __name__ == "__main__":
    sys.exit(end_process_group(run_script(TrainDecoderConfig, main, __doc__)))
