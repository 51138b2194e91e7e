"""VideoConfig: the settings of `colordiff colorize-video` (every image setting of ColorizeConfig, plus the temporal
stages and the output encoding), and EvalVideoConfig for `colordiff evaluate-video`."""

from __future__ import annotations

from dataclasses import dataclass, field

from colordiff.colorize import ColorizeConfig
from colordiff.config import setting

FORMATS = ("auto", "mp4", "mov", "mkv", "webm", "avi", "frames")
FLOW_METHODS = ("dis", "farneback", "raft")


@dataclass
class ShotSettings:
    """Stage 1: a cut starts a new shot; nothing (chroma, flow, seed) crosses it."""

    enabled: bool = True
    # histogram: half the L1 distance of consecutive 32-bin luma histograms, in [0, 1]; ssim: 1 - SSIM of the lumas
    method: str = setting("histogram", choices=("histogram", "ssim"))
    threshold: float = setting(0.3, above=0, max=1)  # a change above this is a cut


@dataclass
class KeyframeSettings:
    """Stage 2: which frames the model colorizes (a shot's first frame, then one of these rules fires)."""

    interval: int = setting(16, min=1)  # K: at most this many frames from one keyframe to the next
    # accumulated mean flow since the last keyframe, as a fraction of the grid's diagonal
    motion: float = setting(0.15, above=0)
    # fraction of the frame the forward propagation still covers reliably; below it the frame gets a model call
    min_coverage: float = setting(0.6, min=0, max=1)


@dataclass
class FlowSettings:
    """Stage 3: dense optical flow on the luma, and how chroma follows it."""

    method: str = setting("dis", choices=FLOW_METHODS)  # OpenCV DIS | OpenCV Farneback | torchvision RAFT
    raft_weights: str | None = None  # method=raft: a local safetensors file of torchvision's raft_small / raft_large
    raft_iters: int = setting(12, min=1)
    # longest side of the grid that flow, shot detection and chroma propagation run on (the model's chroma is taken
    # at this size and enlarged under each frame's exact L)
    grid: int = setting(512, min=16)
    # forward-backward consistency (Sundaram et al.): |f + b|^2 < alpha (|f|^2 + |b|^2) + beta, soft
    alpha: float = setting(0.01, min=0)
    beta: float = setting(0.5, above=0)
    # a pixel whose chroma confidence (the consistency above, multiplied along the chain to its keyframe) is at or
    # below this counts as occluded; the share of such pixels also drives keyframes.min_coverage
    reliable: float = setting(0.5, min=0, max=1)
    # occluded pixels take no chroma along the flow: they are filled from the reliable pixels around them
    occlusion_fill: bool = True


@dataclass
class SmoothingSettings:
    """Stage 4 (optional): pull each frame's a/b towards the previous output warped along the flow."""

    enabled: bool = False
    strength: float = setting(0.5, min=0, max=1)  # weight of the warped previous chroma where the flow is reliable


@dataclass
class OutputSettings:
    """How the colorized video is written."""

    format: str = setting("auto", choices=FORMATS)  # auto: the input's own container (a frames folder: frames)
    lossless: bool = False  # FFV1 (RGB, in MKV) for videos; frames are PNG either way
    crf: int = setting(18, min=0, max=51)  # H.264 (and VP9 for WebM) constant rate factor
    preset: str = "medium"  # x264 preset
    frame_rate: float = setting(25.0, above=0)  # frames-folder inputs: their frame rate
    # zlib level of PNG frames (format frames), lossless at every level: on 960x540 frames level 1 writes in a third
    # of the time of Pillow's default 6 for about 10 % more bytes (docs/video.md)
    png_compression: int = setting(1, min=0, max=9)


@dataclass
class VideoConfig(ColorizeConfig):
    """Settings of `colordiff colorize-video`: the image keys of ColorizeConfig (model, steps, scheduler, seed,
    prompt, priors, resolution, ...) and the temporal stages."""

    temporal: str = setting("flow", choices=("none", "flow"))  # none: every frame colorized alone (the baseline)
    shots: ShotSettings = field(default_factory=ShotSettings)
    keyframes: KeyframeSettings = field(default_factory=KeyframeSettings)
    flow: FlowSettings = field(default_factory=FlowSettings)
    smoothing: SmoothingSettings = field(default_factory=SmoothingSettings)
    output: OutputSettings = field(default_factory=OutputSettings)

    def config_checks(self):
        if self.num_samples != 1:
            yield "num_samples", "must be 1 for videos"
        if not self.keep_luminance:
            yield "keep_luminance", "must be true for videos (each frame keeps its exact L)"
        if self.captions is not None:
            yield "captions", "is not supported for videos; use prompt"
        if self.save_priors:
            yield "save_priors", "is not supported for videos"
        if self.flow.method == "raft" and self.temporal == "flow" and not self.flow.raft_weights:
            yield "flow.raft_weights", "is required with flow.method=raft (a local safetensors file)"


@dataclass
class EvalVideoConfig:
    """Settings of `colordiff evaluate-video`."""

    pred: str = "???"  # the colorized video (or frames folder)
    gt: str | None = None  # the color original: adds colorfulness, delta_cf and psnr
    json: str | None = None  # results file (also printed)
    flow: str = setting("dis", choices=FLOW_METHODS)  # the flow the warping error follows
    raft_weights: str | None = None
    raft_iters: int = setting(12, min=1)
    grid: int = setting(0, min=0)  # longest side the warping error is measured at; 0: native
    alpha: float = setting(0.01, min=0)  # the occlusion test (forward-backward consistency), as FlowSettings
    beta: float = setting(0.5, above=0)
    fps: float | None = setting(None, above=0)  # the frame rate of frames folders (required for them)
