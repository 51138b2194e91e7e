"""Uploaded videos in `colordiff demo`: colorized as `colordiff colorize-video` does (shots, keyframes by the model,
chroma along the flow, every frame's exact L, audio copied), written as MP4 (H.264, which every browser plays).

A result is the file colorize-video writes for the same file name and settings with `output.format=mp4`: the same
job (colordiff.video.job.colorize_clip), seeds (sample_seed of the seed, the file's name and the shot index) and
encoder. The page shows it in a player, its first frame before and after in the slider, and offers it to download.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, fields
from pathlib import Path

import PIL.Image

from colordiff.colorize import ColorizeConfig
from colordiff.config import ConfigError, check_settings, error_line
from colordiff.images import gray_pil
from colordiff.video.config import VideoConfig
from colordiff.video.flow import make_flow
from colordiff.video.io import VIDEO_SUFFIXES, VideoReadError, open_clip
from colordiff.video.job import Clip, FrameColorizer, colorize_clip

# what a demo run never changes for a video (VideoConfig refuses other values)
VIDEO_FIXED = {"num_samples": 1, "keep_luminance": True, "captions": None, "save_priors": False}


class VideoUploadError(ValueError):
    """An uploaded video that cannot be colorized, in one line naming it (not a video, too long, ...)."""


@dataclass
class VideoResult:
    """One colorized upload: the MP4, and its first frame before (gray) and after."""

    name: str  # the uploaded file's name, unique within the run
    path: Path  # NAME.mp4 in a folder of its own
    gray: PIL.Image.Image
    first: PIL.Image.Image
    frames: int


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def video_settings(settings: ColorizeConfig, workdir: Path) -> VideoConfig:
    """The colorize-video settings of a demo run: its image settings, the video stages' defaults, MP4 out."""
    values = {f.name: getattr(settings, f.name) for f in fields(ColorizeConfig)}
    config = VideoConfig(**{**values, **VIDEO_FIXED, "inputs": [], "output_dir": str(workdir)})
    config.output.format = "mp4"
    try:
        check_settings(config)
    except ConfigError as err:
        raise VideoUploadError(error_line(err)) from None
    return config


class _FrameReport:
    """The job's progress bar (total, update, refresh) as the page's report(done, total) of frames."""

    def __init__(self, report):
        self.report, self.total, self.done = report, 0, 0

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.report is not None and self.total:
            self.report(min(self.done, self.total), self.total)

    def refresh(self) -> None:
        pass


def colorize_video(pipe, kinds, source: Path, name: str, settings: ColorizeConfig, workdir: Path, max_frames: int,
                   report=None) -> VideoResult:
    """Colorize an uploaded video into workdir/<new folder>/STEM.mp4; a VideoUploadError of one line naming the
    upload when it cannot be decoded or is longer than `max_frames` frames (0: no limit)."""
    config = video_settings(settings, workdir)
    try:
        info, frames = open_clip(source, config.output.frame_rate)
        first = next(frames)  # open_clip has decoded it: a video without frames is a VideoReadError
        frames.close()  # the decoder's file
    except VideoReadError as err:
        raise VideoUploadError(f"{name}: {err.reason}") from None
    if max_frames and info.frames > max_frames:
        raise VideoUploadError(f"{name}: {info.frames} frames; the demo takes videos of at most {max_frames} "
                               "frames (colordiff colorize-video has no limit)")
    folder = workdir / uuid.uuid4().hex
    clip = Clip(source, Path(name), folder / Path(name).with_suffix(".mp4").name)
    flow = make_flow(config.flow.method, config.flow.raft_weights, config.flow.raft_iters)
    try:
        colorize_clip(clip, FrameColorizer(pipe, config, kinds), flow, config, _FrameReport(report))
    except VideoReadError as err:
        raise VideoUploadError(f"{name}: {err.reason}") from None
    _, written = open_clip(clip.target)
    colored = next(written).rgb
    written.close()
    return VideoResult(name, clip.target, gray_pil(first.rgb), PIL.Image.fromarray(colored), info.frames)
