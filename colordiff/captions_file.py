"""`colordiff colorize --captions FILE`: per-image captions from a JSONL file instead of a captioner.

The format is scripts/caption.py's; a line's "path" is matched against each input in a fixed order (caption_for).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from colordiff.config import error_line
from colordiff.errors import UsageError

CAPTION_KEYS = ("caption_gray", "caption")  # scripts/caption.py's gray caption; "caption" for hand-written files


def load_captions(path: str, key: str = "caption_gray") -> dict[str, str]:
    """{normalised "path": caption} from a JSONL file, one JSON object a line (blank lines skipped).

    The format scripts/caption.py writes: `{"path": ..., "caption_gray": ..., ...}`; other keys are ignored and
    "caption" is accepted in place of "caption_gray". Another `key` (e.g. "caption_color", the Des_c a model was
    trained on) reads that key alone. Anything else (bad JSON, no "path", no caption, a caption that is not a
    string, two different captions for one path) is a usage error naming FILE:LINE, before any image is read.
    """
    keys = CAPTION_KEYS if key == CAPTION_KEYS[0] else (key,)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"cannot read captions file {path}: {error_line(err)}") from None
    captions: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise UsageError(f"{where}: not valid JSON ({err.msg}, column {err.colno})") from None
        if not isinstance(record, dict):
            raise UsageError(f"{where}: expected a JSON object, got {type(record).__name__}")
        photo = record.get("path")
        if not isinstance(photo, str) or not photo.strip():
            raise UsageError(f'{where}: no "path" string')
        present = [k for k in keys if k in record]
        if not present:
            wanted = '"caption_gray" (or "caption")' if len(keys) > 1 else f'"{keys[0]}"'
            raise UsageError(f"{where}: no {wanted} for {photo}")
        for name in present:
            if not isinstance(record[name], str):
                raise UsageError(f'{where}: "{name}" must be a string, got {json.dumps(record[name])}')
        if len({record[k] for k in present}) > 1:
            raise UsageError(f'{where}: "caption_gray" and "caption" differ; give one')
        photo, caption = _caption_key(photo), record[present[0]]
        if captions.get(photo, caption) != caption:
            raise UsageError(f"{where}: a different caption for {photo} than on line {first_line[photo]}")
        captions[photo] = caption
        first_line.setdefault(photo, number)
    if not captions:
        raise UsageError(f"captions file {path} holds no captions")
    return captions


def caption_for(captions: dict[str, str], source: Path, relative: Path) -> str | None:
    """The caption of one input, or None. A line's "path" matches, in this order: the input's path relative to its
    INPUT (what OUT mirrors; what scripts/caption.py writes over the same folder), the path as reached from the
    INPUT argument (e.g. photos/sub/a.png), its absolute path, its resolved path (symlinks followed)."""
    for key in (relative, source, Path(os.path.abspath(source)), source.resolve()):
        found = captions.get(_caption_key(str(key)))
        if found is not None:
            return found
    return None


def _caption_key(path: str) -> str:
    return Path(os.path.normpath(path)).as_posix()  # "./a.png" -> "a.png", "sub//b.png" -> "sub/b.png"


def priors_beside_captions(priors: str) -> str:
    """The priors still computed by generators when --captions supplies the caption prior (`priors` without it).

    auto: every recorded generator but the captioner; all: category and segmentation; a list must name caption.
    --priors none, or a list without caption, would leave the file unused: a usage error.
    """
    names = [n.strip() for n in priors.split(",") if n.strip()]
    if names == ["auto"]:
        return "auto"
    if names == ["all"]:
        return "category,segmentation"
    if "caption" not in names:
        raise UsageError(f"--captions gives the caption prior, but priors={priors!r} leaves it out; "
                         "use priors auto, all or a list with caption")
    rest = [n for n in names if n != "caption"]
    return ",".join(rest) if rest else "none"
