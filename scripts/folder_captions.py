"""Write the captions of every photo of a folder tree from its own labels (colordiff/mini/captions.py): human
captions where a source folder has a captions.jsonl (Des_c, and Des_g with the color words removed), ImageNet class
names from the file names and folder labels as category captions ("a photo of a goldfish"), empty captions otherwise.

    python scripts/folder_captions.py DATA_DIR OUTPUT.jsonl
    python scripts/folder_captions.py ../shared/data/colorization outputs/mini/photos/captions.jsonl
"""

import argparse
import sys

from colordiff.mini.captions import write_folder_captions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", metavar="DATA_DIR", help="the folder tree of photos (recursive)")
    parser.add_argument("output", metavar="OUTPUT", help="the captions file to write (JSONL)")
    args = parser.parse_args(argv)
    path = write_folder_captions(args.data_dir, args.output)
    print(f"wrote {sum(1 for _ in open(path, encoding='utf-8'))} captions to {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
