"""Checkpoint folders: output_dir/checkpoint-<step>, written atomically, rotated, found again for resume."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


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


def rotate_checkpoints(output_dir: str | Path, keep: int | None) -> list[Path]:
    """Remove the oldest checkpoints so that `keep - 1` remain (room for the one about to be written)."""
    if keep is None:
        return []
    checkpoints = list_checkpoints(output_dir)
    doomed = checkpoints[: max(0, len(checkpoints) - (keep - 1))]
    for path in doomed:
        shutil.rmtree(path)
    return doomed


def staging_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / f"checkpoint-{step}.tmp"


def publish(staging: Path) -> Path:
    """Rename a fully written staging folder to its final name: a checkpoint is whole or absent."""
    final = staging.with_name(staging.name.removesuffix(".tmp"))
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    return final
