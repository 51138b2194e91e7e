"""Captions from a folder tree's own labels (scripts/folder_captions.py): the miniature's captions file for
../shared/data/colorization, in the format the training data and `colordiff colorize --captions` read.

One JSONL line per photo, keyed by its miniature name (colordiff/mini/photos.py's photo_names) + ".png", with
a color caption (Des_c) and a gray caption (Des_g), per source:
- a source folder holding captions.jsonl (COCO: `{"path", "captions": [five human captions]}`): Des_c is the first
  of its captions that names a color (the first caption when none does), Des_g the same with the color words
  removed ("a red bus" -> "a bus");
- an ImageNet file name (`n01443537_goldfish.jpg`): "a photo of a goldfish", both captions (a category is seen in gray);
- a file one folder below its source (`scenes/forest/1004.jpg`): "a photo of a forest" from the folder, both captions
  (a split folder such as `bsds500/train/` is no label);
- anything else (BSDS500): empty captions (the training loader needs a line for every photo).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from colordiff.data import load_captions
from colordiff.io import atomic_write
from colordiff.mini.photos import photo_files, photo_names, source_of

_COLORS = ("red|orange|yellow|green|blue|purple|violet|pink|brown|black|white|gr[ae]y|beige|tan|maroon|navy|teal|"
           "turquoise|cyan|magenta|lavender|golden|gold|silver|blond|blonde|crimson|scarlet|colou?rful|"
           "multi-?colou?red|brightly[- ]colou?red")
_SHADE = r"(?:(?:light|dark|bright|pale|deep|brightly|vivid)[- ])"
_COLOR = rf"{_SHADE}?(?:{_COLORS})(?:dish|ish)?(?:[- ]colou?red)?"
# one color phrase: "red", "light blue", "black and white", "red, white and blue", "black-and-white", "blue/green"
COLOR_PHRASE = re.compile(rf"\b{_COLOR}(?:(?:\s*,\s*|\s+and\s+|\s*,\s*and\s+|-and-|[-/]){_COLOR})*\b", re.IGNORECASE)
SPLIT_FOLDERS = {"train", "val", "test", "training", "validation"}  # a data split, not a label (bsds500/train)
IMAGENET = re.compile(r"^n\d{8}_(.+)$")
# how a folder label reads after "a photo of": plural and mass nouns without the article
LABEL_PHRASES = {"buildings": "buildings", "sea": "the sea", "street": "a street", "mountain": "a mountain",
                 "forest": "a forest", "glacier": "a glacier"}


def remove_color_words(caption: str) -> str:
    """Des_g from Des_c: every color phrase removed, then "a"/"an" matched to the next word, a preposition left
    dangling at the end dropped, spaces tidied ("An orange cat on a red and white bed." -> "A cat on a bed.")."""
    text = COLOR_PHRASE.sub(" ", caption)
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"\s+([.,;:!?])", r"\1", text)
    text = re.sub(r"\b(in|of|with|and)\s*([.!?]?)$", r"\2", text, flags=re.IGNORECASE).strip()
    text = re.sub(r"\s+([.!?])$", r"\1", text)

    def article(match: re.Match) -> str:
        word, following = match.group(1), match.group(2)
        right = "an" if following[0].lower() in "aeiou" else "a"
        return (right.capitalize() if word[0].isupper() else right) + " " + following

    return re.sub(r"\b(an?|An?)\s+(\w)", article, text)


def names_a_color(caption: str) -> bool:
    return COLOR_PHRASE.search(caption) is not None


def category_caption(label: str) -> str:
    """"a photo of a goldfish" from a class or folder label (underscores to spaces; "an" before a vowel)."""
    words = label.replace("_", " ").strip()
    if words.lower() in LABEL_PHRASES:
        return f"a photo of {LABEL_PHRASES[words.lower()]}"
    return f"a photo of {'an' if words[:1].lower() in 'aeiou' else 'a'} {words}"


def human_captions(folder: Path) -> dict[str, list[str]]:
    """{file name: captions} of a source folder's captions.jsonl, or {} without one."""
    path = folder / "captions.jsonl"
    if not path.is_file():
        return {}
    records = (json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    return {r["path"]: list(r["captions"]) for r in records}


def caption_pair(path: Path, root: Path, human: dict[str, list[str]]) -> tuple[str, str, str]:
    """(Des_c, Des_g, captioner) of one photo, by the rules in the module docstring."""
    if path.name in human and human[path.name]:
        captions = [c.strip() for c in human[path.name]]
        color = next((c for c in captions if names_a_color(c)), captions[0])
        return color, remove_color_words(color), "folder:human"
    match = IMAGENET.match(path.stem)
    if match:
        text = category_caption(match.group(1))
        return text, text, "folder:class_name"
    if len(path.relative_to(root).parts) > 2 and path.parent.name.lower() not in SPLIT_FOLDERS:  # source/label/file
        text = category_caption(path.parent.name)
        return text, text, "folder:folder_label"
    return "", "", "folder:none"


def folder_captions(data_dir: str | Path) -> list[dict]:
    """One record per image file under data_dir (sorted by path): {"path": "<name>.png", "caption_color",
    "caption_gray", "captioner"}; every image gets a line, black-and-white ones too (the miniature screens them)."""
    root = Path(data_dir)
    files = photo_files(root)
    names, human = photo_names(root, files), {}
    records = []
    for f in files:
        source = source_of(root, f)
        if source not in human:
            human[source] = human_captions(root if source == "." else root / source)
        color, gray, captioner = caption_pair(f, root, human[source])
        records.append({"path": f"{names[f]}.png", "caption_gray": gray, "caption_color": color,
                        "captioner": captioner})
    return records


def write_folder_captions(data_dir: str | Path, output: str | Path) -> Path:
    """Write folder_captions(data_dir) to `output` as JSONL (whole or absent)."""
    output = Path(output)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in folder_captions(data_dir))
    with atomic_write(output) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return output


def photo_texts(files: list[Path], captions: str | None, key: str) -> list[str]:
    """The text of each photo file (matched by file stem): its `key` caption in the captions file, or "" without one."""
    records = load_captions(captions, key) if captions is not None else {}
    by_stem = {Path(path).stem: text for path, text in records.items()}
    return [by_stem.get(p.stem, "") for p in files]
