"""Precompute the VAE latents of a training set for scripts/train_unet.py (`latents_cache`).

    accelerate launch scripts/precompute_latents.py --config configs/colordiff/unet.yaml \
        train_data_dir=/data/imagenet/train latents_cache=/data/imagenet_latents_512
"""

import sys

from colordiff.devices import end_process_group
from colordiff.training.cli import run_script
from colordiff.training.precompute import main
from colordiff.training.unet import TrainUNetConfig

if __name__ == "__main__":
    sys.exit(end_process_group(run_script(TrainUNetConfig, main, __doc__)))
