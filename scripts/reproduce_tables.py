"""Reproduce a column of the papers' Table 1, or one ablation row, on a prepared evaluation set.

Colorizes the set, evaluates it, and writes the table in the papers' layout (Markdown + CSV, our row beside the
published ones) with a comparison grid (gray | ours | GT).

    python scripts/prepare_eval.py --config configs/eval/cocostuff_val.yaml --source /data/coco/val2017   # once
    python scripts/reproduce_tables.py --config configs/eval/cocostuff_val.yaml --model models/colordiff \
        --fid-weights weights/weights-inception-2015-12-05-6726825d.pth
    accelerate launch --multi_gpu --num_processes 4 scripts/reproduce_tables.py --config ...   # on 4 GPUs
    python scripts/reproduce_tables.py --config configs/eval/ablations/seada_table4_without_rca.yaml --fid-weights W
        # one ablation row; the whole table, from every row run so far: outputs/eval/seada_table4/table_*.md

Resumable: finished colorizations are skipped on a re-run. Keys of EvalSetConfig (colordiff/reproduce.py) can be
overridden as key=value, e.g. evaluation.fid_variant=torchvision or colorize_overrides=[steps=20].
"""

from __future__ import annotations

import sys

from colordiff.devices import end_process_group
from colordiff.reproduce import eval_set_main, eval_set_parser, reproduce_tables

FLAGS = {"model": "model", "output_dir": "output_dir", "fid_weights": "evaluation.fid_weights",
         "fid_variant": "evaluation.fid_variant", "prepared_dir": "prepared_dir"}


def main(argv: list[str] | None = None) -> int:
    parser = eval_set_parser(__doc__)
    parser.add_argument("--model", help="model folder or hub id to colorize with")
    parser.add_argument("--prepared", dest="prepared_dir", help="the prepared set (default: from the config)")
    parser.add_argument("--output-dir", dest="output_dir", help="where results go (default outputs/eval/<set>)")
    parser.add_argument("--fid-weights", dest="fid_weights", help="local Inception weights file for FID")
    parser.add_argument("--fid-variant", dest="fid_variant", choices=["fidelity", "torchvision"])
    return eval_set_main("reproduce_tables", parser, FLAGS, reproduce_tables, argv)


if __name__ == "__main__":
    sys.exit(end_process_group(main()))
