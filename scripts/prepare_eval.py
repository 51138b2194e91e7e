"""Build an evaluation set from your copy of the originals: protocol-cropped ground truths (gt/), their gray inputs
(gray/) and the list of files used (files.txt), so that everybody evaluates on the same images.

    python scripts/prepare_eval.py --config configs/eval/imagenet_val5k.yaml --source /data/ILSVRC2012/val
    python scripts/prepare_eval.py --config configs/eval/cocostuff_val.yaml --source /data/coco/val2017
    python scripts/prepare_eval.py --config configs/eval/ade20k_val.yaml --source /data/ADEChallengeData2016

Re-running skips finished images. Keys of EvalSetConfig (colordiff/reproduce.py) can be overridden as key=value.
"""

from __future__ import annotations

import sys

from colordiff.reproduce import eval_set_main, eval_set_parser, prepare_eval_set


def main(argv: list[str] | None = None) -> int:
    parser = eval_set_parser(__doc__)
    parser.add_argument("--source", help="folder with the original images (searched recursively)")
    parser.add_argument("--out", dest="prepared_dir", help="where to write the prepared set (prepared_dir)")
    parser.add_argument("--overwrite", action="store_true", default=None, help="redo finished images")
    flags = {key: key for key in ("source", "prepared_dir", "overwrite")}
    return eval_set_main("prepare_eval", parser, flags, prepare_eval_set, argv)


if __name__ == "__main__":
    sys.exit(main())
