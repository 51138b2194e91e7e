"""Claim files: one run at a time computes an output, however many runs (or launched processes) share a folder.

A claim is a hidden file `.NAME.claim` beside the output NAME, created with O_EXCL (atomic on local filesystems and
NFSv3+), holding the claimer's host, process id and start time. It is released (deleted) once the output is
written or has failed. A claim is stale when its process is gone (same host) or it is older than `stale_after_s`
(other hosts, whose processes cannot be checked); a stale claim is taken over, so a killed run never blocks others.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from pathlib import Path

STALE_AFTER_S = 6 * 3600.0  # a claim from another host older than this is presumed dead


def claim_path(output: Path) -> Path:
    return output.parent / f".{output.name[:200]}.claim"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def is_stale(path: Path, stale_after_s: float = STALE_AFTER_S) -> bool:
    """True when the claim at path belongs to no live run (an unreadable or half-written claim counts as stale only
    once old enough: its writer may be writing it right now)."""
    try:
        age = time.time() - path.stat().st_mtime
        owner = json.loads(path.read_text())
        if owner.get("host") == socket.gethostname():
            return not _alive(int(owner["pid"]))
    except FileNotFoundError:
        return True
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return age > 60.0
    return age > stale_after_s


def acquire(output: Path, stale_after_s: float = STALE_AFTER_S) -> bool:
    """Claim `output` for this process; False when a live run holds it. Takes over a stale claim."""
    path = claim_path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()})
    for _ in range(2):  # a second try after taking over a stale claim
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            if not is_stale(path, stale_after_s):
                return False
            # rename, not unlink: of several runs taking over the same stale claim only one rename succeeds
            grave = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.stale")
            try:
                os.rename(path, grave)
            except FileNotFoundError:
                return False  # another run took it over first
            grave.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(record)
        return True
    return False


def release(output: Path) -> None:
    """Drop this process's claim on `output` (a no-op when there is none)."""
    claim_path(output).unlink(missing_ok=True)
