"""Clips made from a still photo (camera pans, zooms, static shots, cuts), for tests and the benchmark: real image
content with known motion, written with PyAV."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np


def camera_frames(photo: np.ndarray, size: tuple[int, int], count: int, motion: str = "pan",
                  travel: float = 0.3) -> Iterator[np.ndarray]:
    """`count` frames (h, w, 3) uint8 of a virtual camera over `photo` (H, W, 3): "pan" slides left to right over
    `travel` of the photo's width, "zoom" closes in to 1 / (1 + travel) of the view, "static" holds still."""
    import cv2

    w, h = size
    H, W = photo.shape[:2]
    base = min(W * (1 - travel) / w, H / h) if motion == "pan" else min(W / w, H / h)  # photo pixels per frame pixel
    for k in range(count):
        s = k / max(count - 1, 1)
        scale = base / (1 + travel * s) if motion == "zoom" else base
        cx = (W * (1 - travel) / 2 + travel * W * s) if motion == "pan" else W / 2
        cy = H / 2
        matrix = np.array([[scale, 0, cx - scale * w / 2], [0, scale, cy - scale * h / 2]], dtype=np.float64)
        yield cv2.warpAffine(photo, matrix, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                             borderMode=cv2.BORDER_REFLECT)


def write_clip(path: Path, frames: Iterable[np.ndarray], rate: int = 12, codec: str = "libx264",
               pix_fmt: str = "yuv420p", pts: list[int] | None = None, time_base: Fraction | None = None,
               audio_seconds: float = 0.0, options: dict | None = None, container_format: str | None = None) -> Path:
    """Encode RGB frames into a video file; `pts` (in `time_base`) gives variable frame rates; a sine tone of
    `audio_seconds` adds an AAC (Opus in WebM) audio stream."""
    import av

    frames = iter(frames)
    first = next(frames)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = first.shape[:2]
    with av.open(str(path), "w", format=container_format) as out:
        video = out.add_stream(codec, rate=rate, options=options or {})
        video.width, video.height, video.pix_fmt = w, h, pix_fmt
        tb = time_base or Fraction(1, rate)
        video.time_base = video.codec_context.time_base = tb
        stamps = iter(pts) if pts is not None else itertools.count()
        sound = None
        if audio_seconds:
            sound = out.add_stream("libopus" if path.suffix == ".webm" else "aac", rate=48000 if
                                   path.suffix == ".webm" else 16000)
        for image, stamp in zip(itertools.chain([first], frames), stamps, strict=False):  # stamps may run on
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts, frame.time_base = stamp, tb
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if sound is not None:
            rate_hz, block = sound.rate, 960
            t = np.arange(int(audio_seconds * rate_hz), dtype=np.float32) / rate_hz
            tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            for start in range(0, len(tone) - block + 1, block):
                chunk = av.AudioFrame.from_ndarray(tone[None, start:start + block], format="fltp", layout="mono")
                chunk.sample_rate, chunk.pts = rate_hz, start
                out.mux(sound.encode(chunk))
            out.mux(sound.encode(None))
    return path
