"""The miniature: build a mini base from photos, train both papers' recipes on it, score them on held-out photos.

    python scripts/miniature.py --config configs/mini/lab.yaml [data_dir=PHOTOS] [heldout_every=K] [key=value ...]
    python scripts/miniature.py --config configs/mini/lab.yaml --config configs/mini/lab_photos.yaml

Writes work_dir/table.md (and table.json) in the papers' layout and work_dir/grid.png; resumable.
"""

import sys

from colordiff.mini.lab import LabConfig, main
from colordiff.training.cli import run_script

if __name__ == "__main__":
    sys.exit(run_script(LabConfig, main, __doc__))
