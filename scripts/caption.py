"""Precompute the captions of a training set into a JSONL cache (colordiff/caption_cache.py; `--help` tells more).

    python scripts/caption.py data_dir=/data/train output=captions.jsonl
    python scripts/caption.py --config configs/semantics/captions_seada.yaml data_dir=... output=...   # CoCa
    accelerate launch --num_processes 4 scripts/caption.py data_dir=... output=...   # every 4th image each
"""

import sys

from colordiff.caption_cache import main
from colordiff.devices import end_process_group

if __name__ == "__main__":
    sys.exit(end_process_group(main()))
