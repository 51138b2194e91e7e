"""Reading videos and frame folders one frame at a time, and what a clip keeps through colorization: timestamps,
rotation, sample aspect ratio, its other streams.

A video is decoded by PyAV; a folder of numbered frames is read with colordiff.io.read_image in the order of the
numbers in the names. Every failure is a VideoReadError of one line naming the file and the reason.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from colordiff.config import error_line
from colordiff.io import IMAGE_SUFFIXES, ImageReadError, read_image

VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm"}
CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "mkv", ".avi": "avi", ".webm": "webm"}
MIN_SIDE = 8


class VideoReadError(ValueError):
    """A video or frames folder that cannot be used, with the path and a one-line reason."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path, self.reason = Path(path), " ".join(str(reason).split())
        super().__init__(f"{self.path}: {self.reason}")

    def __reduce__(self):
        return (type(self), (self.path, self.reason))


@dataclass
class Frame:
    """One decoded frame: its index in the clip, its timestamp and its pixels."""

    index: int
    pts: int  # in ClipInfo.time_base
    rgb: np.ndarray  # (H, W, 3) uint8, or float32 in [0, 1] for frames read from image files


@dataclass
class ClipInfo:
    """What the output keeps of its input."""

    path: Path
    kind: str  # a CONTAINERS value, or "frames"
    width: int
    height: int
    time_base: Fraction
    rate: Fraction  # the average frame rate (for containers that need one)
    frames: int  # announced by the container (0: unknown)
    sample_aspect_ratio: Fraction | None = None
    display_matrix: tuple[int, ...] | None = None  # the 3x3 display matrix (rotation), as ffmpeg stores it
    frame_names: list[str] = field(default_factory=list)  # frames folders: the file names, in order

    @property
    def rotation(self) -> int:
        """Degrees the display matrix rotates counterclockwise (0 without one)."""
        if self.display_matrix is None:
            return 0
        a, b, _, c, d, *_ = self.display_matrix
        return round(np.degrees(np.arctan2(b / 65536, a / 65536)) * -1) if (a or b) else 0


def frame_number(path: Path) -> int:
    """The last number in a frame file's name, -1 when it has none: what orders a frames folder."""
    numbers = re.findall(r"\d+", path.stem)
    return int(numbers[-1]) if numbers else -1


def numbered_frames(folder: Path) -> list[Path]:
    """The image files of a frames folder in the order of the last number in each name (then by name)."""
    files = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")]
    return sorted(files, key=lambda p: (frame_number(p), p.name))


def is_frames_folder(path: Path) -> bool:
    return path.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir() if p.is_file())


def open_clip(path: Path, frame_rate: float = 25.0) -> tuple[ClipInfo, Iterator[Frame]]:
    """The clip's info and an iterator over its frames (decoded lazily); raises VideoReadError."""
    if path.is_dir():
        return _open_frames(path, frame_rate)
    return _open_video(path)


def _open_frames(folder: Path, frame_rate: float) -> tuple[ClipInfo, Iterator[Frame]]:
    files = numbered_frames(folder)
    if not files:
        raise VideoReadError(folder, "no image frames in the folder")
    try:
        first = read_image(files[0])
    except ImageReadError as err:
        raise VideoReadError(files[0], err.reason) from None
    height, width = first.rgb.shape[:2]
    rate = Fraction(frame_rate).limit_denominator(1001)
    info = ClipInfo(folder, "frames", width, height, 1 / rate, rate, len(files), frame_names=[p.name for p in files])

    def frames() -> Iterator[Frame]:
        for index, file in enumerate(files):
            try:
                image = first if index == 0 else read_image(file)
            except ImageReadError as err:
                raise VideoReadError(file, err.reason) from None
            if image.rgb.shape[:2] != (height, width):
                raise VideoReadError(file, f"{image.size[0]} x {image.size[1]} differs from the first frame's "
                                     f"{width} x {height}")
            yield Frame(index, index, image.rgb)

    return info, frames()


def _probe(path: Path):
    import av

    if not path.is_file():
        raise VideoReadError(path, "not found" if not os.path.lexists(path) else "not a regular file")
    if path.stat().st_size == 0:
        raise VideoReadError(path, "empty file (0 bytes)")
    try:
        container = av.open(str(path))
    except av.FFmpegError as err:
        raise VideoReadError(path, f"not a readable video (truncated, corrupt or another kind of file): "
                             f"{error_line(err)}") from None
    if not container.streams.video:
        container.close()
        raise VideoReadError(path, "has no video stream")
    return container


def _open_video(path: Path) -> tuple[ClipInfo, Iterator[Frame]]:
    container = _probe(path)
    stream = container.streams.video[0]
    codec = stream.codec_context
    rate = stream.average_rate or stream.guessed_rate or Fraction(25)
    sar = codec.sample_aspect_ratio
    info = ClipInfo(path, CONTAINERS.get(path.suffix.lower(), "mkv"), codec.width, codec.height,
                    stream.time_base or 1 / rate, Fraction(rate), stream.frames or 0,
                    sample_aspect_ratio=Fraction(sar) if sar else None)
    if min(info.width, info.height) < MIN_SIDE:
        container.close()
        raise VideoReadError(path, f"{info.width} x {info.height} is smaller than the minimum side of {MIN_SIDE}")
    frames = _decode(container, stream, info)
    try:  # the first frame carries the display matrix; decoding it now also proves the stream decodes
        first = next(frames)
    except StopIteration:
        container.close()
        raise VideoReadError(path, "no decodable video frame") from None
    return info, _chain(first, frames)


def _chain(first: Frame, rest: Iterator[Frame]) -> Iterator[Frame]:
    yield first
    yield from rest


def _decode(container, stream, info: ClipInfo) -> Iterator[Frame]:
    """Frames in presentation order with their own timestamps; a decoding error is a VideoReadError."""
    import av
    from av.sidedata.sidedata import Type

    index, last_pts = 0, None
    step = max(1, round(1 / (info.rate * info.time_base)))  # one frame's duration in time_base, for missing pts
    try:
        for frame in container.decode(stream):
            if index == 0:
                matrix = frame.side_data.get(Type.DISPLAYMATRIX)
                if matrix is not None:
                    info.display_matrix = struct.unpack("=9i", bytes(matrix))
            pts = frame.pts if frame.pts is not None else (0 if last_pts is None else last_pts + step)
            last_pts = pts
            yield Frame(index, pts, frame.to_ndarray(format="rgb24"))  # (H, W, 3) uint8
            index += 1
    except av.FFmpegError as err:
        raise VideoReadError(info.path, f"truncated or corrupt video data at frame {index}: "
                             f"{error_line(err)}") from None
    finally:
        container.close()
    if info.frames and index < info.frames:
        raise VideoReadError(info.path, f"truncated: decoded {index} of the {info.frames} frames the file announces")


def copied_streams(path: Path):
    """The input's audio and subtitle streams (opened container, streams); the caller closes the container."""
    container = _probe(path)
    return container, [s for s in container.streams if s.type in ("audio", "subtitle")]


def write_display_matrix(path: Path, matrix: tuple[int, ...]) -> None:
    """Put a display matrix (rotation) into the first track header (tkhd) of an MP4/MOV file, in place: the
    video track is written first. ffmpeg's display matrix and the tkhd matrix share their order and fixed point."""
    with open(path, "r+b") as fh:
        data = fh.read()
        at = data.find(b"tkhd")
        if at < 4:
            raise ValueError(f"{path}: no track header to hold the rotation")
        box = at - 4
        offset = box + (48 if data[box + 8] == 0 else 60)  # version 0 or 1 track header
        fh.seek(offset)
        fh.write(struct.pack(">9i", *matrix))
