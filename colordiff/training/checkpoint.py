"""Checkpoint folders: output_dir/checkpoint-<step>, written atomically, rotated, found again for resume; and the
train log kept to one row per step across resumes."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from colordiff.io import atomic_write, umask_permissions

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_STAGING = re.compile(r"^checkpoint-(\d+)\.tmp$")


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Finished checkpoints, oldest first (unfinished `.tmp` folders are never listed)."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _CHECKPOINT.match(p.name)]
    return sorted(found, key=checkpoint_step)


def checkpoint_step(path: str | Path) -> int:
    match = _CHECKPOINT.match(Path(path).name)
    if match is None:
        raise ValueError(f"{path}: not a checkpoint folder (checkpoint-<step>)")
    return int(match.group(1))


def resolve_resume(output_dir: str | Path, resume_from_checkpoint: str | None) -> Path | None:
    """The checkpoint to resume from: None, "latest" (None when there is none yet: a fresh start) or a folder."""
    if resume_from_checkpoint is None:
        return None
    if resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1] if checkpoints else None
    path = Path(resume_from_checkpoint)
    if not path.is_dir():
        raise FileNotFoundError(f"resume_from_checkpoint: {path} does not exist")
    checkpoint_step(path)
    return path


def rotate_checkpoints(output_dir: str | Path, keep: int | None, newest: Path | None = None) -> list[Path]:
    """Remove the oldest finished checkpoints so that `keep` remain (at least one). Called after a new checkpoint
    is published, so a run stopped at any moment leaves its last finished checkpoint behind; `newest` (the one just
    published) is always among those kept."""
    if keep is None:
        return []
    keep = max(1, keep)
    others = [p for p in list_checkpoints(output_dir) if newest is None or p.name != newest.name]
    kept_others = keep - 1 if newest is not None else keep
    doomed = others[: max(0, len(others) - kept_others)]
    for path in doomed:
        shutil.rmtree(path)
    return doomed


def staging_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / f"checkpoint-{step}.tmp"


def remove_stale_staging(output_dir: str | Path) -> list[Path]:
    """Delete the `checkpoint-<step>.tmp` folders a stopped run left behind (nothing else is touched)."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    stale = [p for p in root.iterdir() if _STAGING.match(p.name) and p.is_dir() and not p.is_symlink()]
    for path in stale:
        shutil.rmtree(path)
    return stale


def publish(staging: Path) -> Path:
    """Give a fully written staging folder the usual file modes (safetensors writes 0o600) and rename it to its
    final name: a checkpoint is whole or absent."""
    umask_permissions(staging)
    final = staging.with_name(staging.name.removesuffix(".tmp"))
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    return final


def read_log(path: str | Path) -> list[dict]:
    """The rows of a JSONL log that carry a step (a torn last line from a stopped run is skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
    return rows


def truncate_log(path: str | Path, step: int) -> None:
    """Rewrite a JSONL log (atomically) keeping only the rows up to `step`: a resumed run appends the steps it
    replays once, not twice."""
    path = Path(path)
    if not path.is_file():
        return
    rows = [row for row in read_log(path) if row["step"] <= step]
    with atomic_write(path) as tmp:
        tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))
