"""Pillow's warnings about one file, kept with that file: what read_image reports in LoadedImage.warnings.

Pillow reports damage it reads past (corrupt EXIF, a malformed MPO, ...) with warnings.warn, printed without the
image's name. Not caught with warnings.catch_warnings: before Python 3.14's context-aware warnings it swaps
process-wide state (filters, showwarning), so in the thread pool that reads images one thread's exit restores what
another installed, and another thread's warning during a decode would be taken as the image's; a lock would bind only
the code that takes it. Python has no per-thread hook for one library's warnings, so the name `warnings` in Pillow's
own modules (and there only) is pointed at _PillowWarnings: its warn() records a call made on a thread inside
recorded_pillow_warnings() and hands every other call to warnings.warn unchanged. The interpreter's warnings.warn,
and what every other library sees, stay as they are. Pillow warns only from Python (its C code never warns).
"""

import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from PIL import Image

_recording = threading.local()
_hearing_lock = threading.Lock()
# passed on, not about the file: the bomb guard keeps its behaviour (read_image turns it into an error when the
# filters make it one), and deprecations speak of the code calling Pillow
_PASSED_ON = (Image.DecompressionBombWarning, DeprecationWarning, PendingDeprecationWarning, FutureWarning)


class _PillowWarnings:
    """The `warnings` Pillow's modules see: warn() records inside recorded_pillow_warnings(); all else is `warnings`."""

    def __getattr__(self, name: str):
        return getattr(warnings, name)

    @staticmethod
    def warn(message, category=None, stacklevel=1, source=None, **kwargs):
        records = getattr(_recording, "records", None)
        kind = type(message) if isinstance(message, Warning) else (category or UserWarning)
        if records is None or issubclass(kind, _PASSED_ON):
            # one frame more: the warning is attributed to Pillow's caller, as without the stand-in
            return warnings.warn(message, category, stacklevel + 1, source, **kwargs)
        line = " ".join(str(message).split())
        if line not in records:  # Pillow reads EXIF more than once and repeats itself
            records.append(line)
        return None


def _hear_pillow() -> None:
    """Point Pillow's modules at _PillowWarnings, once, after Image.init() has imported every format plugin."""
    with _hearing_lock:
        if isinstance(Image.warnings, _PillowWarnings):
            return
        Image.init()
        stand_in = _PillowWarnings()
        for name, module in list(sys.modules.items()):
            if name.startswith("PIL.") and getattr(module, "warnings", None) is warnings:
                module.warnings = stand_in


@contextmanager
def recorded_pillow_warnings() -> Iterator[list[str]]:
    """Yield the list the calling thread's Pillow warnings go to while the block runs."""
    _hear_pillow()
    previous = getattr(_recording, "records", None)
    _recording.records = records = []
    try:
        yield records
    finally:
        _recording.records = previous
