"""Train SeAda, one stage per run (paper 001: stage 0 ControlNet pretraining, stages I, II, III).

    accelerate launch scripts/train_seada.py --config configs/seada/stage0.yaml [key=value ...]
    accelerate launch scripts/train_seada.py --config configs/seada/stage1.yaml   # reads stage 0's model folder
"""

import sys

from colordiff.devices import end_process_group
from colordiff.training.cli import run_script
from colordiff.training.seada import TrainSeAdaConfig, main

if __name__ == "__main__":
    sys.exit(end_process_group(run_script(TrainSeAdaConfig, main, __doc__)))
