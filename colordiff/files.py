"""
Files and folders as the filesystem has them: what an entry that is not a plain file is, the names of the temps that
colordiff.io's atomic writers make (and removing the ones a killed process left), and walking an input folder.

Every reason is one line, for messages of the form "PATH: reason".
"""

import errno
import os
import re
import shutil
import stat
import time
import uuid
from collections.abc import Collection
from pathlib import Path
from typing import NamedTuple

_SPECIAL_FILES = {stat.S_IFIFO: "named pipe", stat.S_IFSOCK: "socket", stat.S_IFCHR: "character device",
                  stat.S_IFBLK: "block device"}


def special_file_reason(mode: int) -> str:
    """The one-line reason for refusing an entry of this st_mode that is neither a regular file nor a folder."""
    return f"not a regular file ({_SPECIAL_FILES.get(stat.S_IFMT(mode), 'special file')})"


def stat_failure_reason(path: Path, exc: OSError) -> str:
    """The one-line reason os.stat(path) failed: a missing file, a broken or looping link, or the system's words."""
    if exc.errno == errno.ELOOP:
        return "symbolic link loop"
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return "broken symbolic link" if path.is_symlink() else "no such file"
    return f"cannot read: {exc.strerror or exc}"


# -----------------------------------------------------------------------------
# temps of the atomic writers

# A temp file is .NAME.<32 hex>.tmp, a staging folder .NAME.tmp-<8 hex>, NAME being the target's name cut to
# _NAME_CHARS: hidden so folder scans skip them, random so concurrent writers never share one. The names below and
# the patterns remove_stale_temps matches are built from the same constants, so the two cannot drift apart.
_NAME_CHARS, _FILE_END, _FILE_HEX, _STAGING_MARK, _STAGING_HEX = 100, ".tmp", 32, ".tmp-", 8
_TEMP_FILE = re.compile(rf"\..{{1,{_NAME_CHARS}}}\.[0-9a-f]{{{_FILE_HEX}}}{re.escape(_FILE_END)}", re.DOTALL)
_STAGING = re.compile(rf"\..{{1,{_NAME_CHARS}}}{re.escape(_STAGING_MARK)}[0-9a-f]{{{_STAGING_HEX}}}", re.DOTALL)

# A live writer's temp is seconds old (an image, a JSON file), and a staging folder being filled gets a newer file
# every few seconds; ten minutes without a change means its writer is gone, while leaving room for a slow disk,
# a network filesystem's clock running a little apart, and a second run started beside the first on the same OUT.
DEFAULT_TEMP_AGE_S = 600


def temp_file_for(path: Path) -> Path:
    """A fresh name for atomic_write's temp file, next to path."""
    return path.parent / f".{path.name[:_NAME_CHARS]}.{uuid.uuid4().hex[:_FILE_HEX]}{_FILE_END}"


def staging_folder_for(path: Path) -> Path:
    """A fresh name for atomic_folder's staging folder, next to path."""
    return path.parent / f".{path.name[:_NAME_CHARS]}{_STAGING_MARK}{uuid.uuid4().hex[:_STAGING_HEX]}"


def _newest_change(folder: Path) -> float:
    """The latest modification time of folder or anything in it (links not followed)."""
    newest = folder.lstat().st_mtime
    for top, dirs, files in os.walk(folder):
        for name in dirs + files:
            try:
                newest = max(newest, os.lstat(os.path.join(top, name)).st_mtime)
            except OSError:  # removed while we looked: that is a change too
                return time.time()
    return newest


def remove_stale_temps(folder: str | os.PathLike, recursive: bool = False,
                       min_age_s: float = DEFAULT_TEMP_AGE_S, target: str | None = None) -> list[Path]:
    """Delete the temp files and staging folders that atomic_write and atomic_folder left in folder (and, with
    recursive, its subfolders) when their process was killed; return the paths removed, in walk order. With
    `target`, only the temps made for the file or folder of that name.

    Only regular files named like atomic_write's temps and real folders named like atomic_folder's staging folders
    go, and only once unchanged for min_age_s seconds (a staging folder counts its newest entry), so a writer still
    at work keeps its temp. Links are not followed; an entry that cannot be removed stays and is not returned; a
    missing folder gives [].
    """
    removed, pending = [], [Path(folder)]
    now = time.time()
    own = None if target is None else re.escape(f".{target[:_NAME_CHARS]}")
    while pending:
        try:
            entries = sorted(os.scandir(pending.pop(0)), key=lambda e: e.name)
        except OSError:  # missing or unreadable: nothing of ours can be cleared there
            continue
        for entry in entries:
            path = Path(entry.path)
            if own is not None and not re.match(own + r"\.(tmp-|[0-9a-f])", entry.name):
                continue  # another target's temp
            try:
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISREG(st.st_mode) and _TEMP_FILE.fullmatch(entry.name):
                    if now - st.st_mtime >= min_age_s:
                        path.unlink()
                        removed.append(path)
                elif stat.S_ISDIR(st.st_mode) and _STAGING.fullmatch(entry.name):
                    if now - _newest_change(path) >= min_age_s:
                        shutil.rmtree(path)
                        removed.append(path)
                elif stat.S_ISDIR(st.st_mode) and recursive:
                    pending.append(path)
            except OSError:  # gone already (another run cleaning up) or not ours to remove
                continue
    return removed


# -----------------------------------------------------------------------------
# input folders


class FolderScan(NamedTuple):
    """What scan_folder found: the files to read, and the entries it could not use, each with a one-line reason."""

    files: list[Path]
    odd: list[tuple[Path, str]]


def scan_folder(folder: str | os.PathLike, suffixes: Collection[str],
                exclude: str | os.PathLike | None = None) -> FolderScan:
    """Walk folder recursively, in sorted order, for regular files whose suffix (any case) is in suffixes.

    Paths are folder / relative path, links unresolved. Entries whose name starts with "." are skipped, and so is
    anything whose resolved location is exclude or inside it (the output folder). Links to files and folders are
    followed. Reported in odd, each once: a pipe, socket or device with a wanted suffix ("not a regular file
    (named pipe)", ...), a broken link ("broken symbolic link") and a link that loops, itself or back to a folder
    being walked ("symbolic link loop"), whatever their names, and a folder that cannot be listed ("cannot read
    folder: <reason>"), folder itself included. Other files are left out silently: a folder of photos holds sidecars.
    """
    root = Path(folder)
    wanted = {s.lower() for s in suffixes}
    skip = Path(exclude).resolve() if exclude is not None else None
    found = FolderScan([], [])

    def excluded(path: Path) -> bool:
        return skip is not None and (path.resolve() == skip or skip in path.resolve().parents)

    def walk(path: Path, ancestors: frozenset[tuple[int, int]]) -> None:
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            found.odd.append((path, f"cannot read folder: {exc.strerror or exc}"))
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            child = Path(entry.path)
            try:
                st = os.stat(child)  # follows links
            except OSError as exc:
                found.odd.append((child, stat_failure_reason(child, exc)))
                continue
            if stat.S_ISDIR(st.st_mode):
                if (st.st_dev, st.st_ino) in ancestors:  # a link back up: following it would never end
                    found.odd.append((child, "symbolic link loop"))
                elif not excluded(child):
                    walk(child, ancestors | {(st.st_dev, st.st_ino)})
            elif child.suffix.lower() in wanted and not excluded(child):
                if stat.S_ISREG(st.st_mode):
                    found.files.append(child)
                else:
                    found.odd.append((child, special_file_reason(st.st_mode)))

    try:
        st = os.stat(root)
    except OSError as exc:
        return FolderScan([], [(root, stat_failure_reason(root, exc))])
    if not excluded(root):
        walk(root, frozenset({(st.st_dev, st.st_ino)}))
    return found
