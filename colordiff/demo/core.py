"""What `colordiff demo` does, without gradio: read uploads, colorize them, edit one image's priors, write downloads.

An image's result is the one `colordiff colorize` writes for the same file name and settings: the same reader
(colordiff.io.read_image), seeds (sample_seed of the seed, the file's name and the sample index), priors, pipeline
call (exact input L, alpha kept) and writer (colordiff.io.write_image), and the same priors sidecar. Downloads are
always PNG (lossless, so the luminance is exact up to 8-bit rounding): NAME.png, NAME_k.png for several samples,
NAME.priors.json, and a zip of them all when there is more than one picture. Uploaded videos are colorized as
`colordiff colorize-video` does (colordiff.demo.video) into NAME.mp4.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
import zipfile
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from colordiff.colorize import ColorizeConfig
from colordiff.colorize_common import load_model, prepare_priors, priors_sidecar, sample_seed, write_priors_sidecar
from colordiff.config import ConfigError, check_settings, error_line
from colordiff.demo.video import VideoResult, VideoUploadError, colorize_video, is_video
from colordiff.devices import DTYPES, accelerator_available
from colordiff.errors import UsageError
from colordiff.images import Luminance, gray_pil, luminance_of
from colordiff.io import ImageReadError, atomic_write, read_image, write_image
from colordiff.schedulers import make_scheduler, scheduler_name
from colordiff.semantics.priors import ImagePriors, Instances

KEEP_SECONDS = 6 * 3600  # result folders older than this are removed when a new upload is colorized
ZIP_NAME = "colorized.zip"
SIDECAR = ".priors.json"  # an uploaded NAME.priors.json gives the priors of the image NAME.*
AUTOMATIC = ImagePriors(extra={"computed": True})  # marks an image whose priors the generators compute
Report = Callable[..., None]  # (steps done, steps in all); videos add unit="frames"


class DemoError(ValueError):
    """Something the page shows as an error message, in one line (a bad setting, no readable upload)."""


@dataclass
class DemoConfig(ColorizeConfig):
    """Settings of `colordiff demo`: the keys of ColorizeConfig (a colorize YAML file works as it is), the values
    the page's controls start from. output_dir, inputs, overwrite, batch_size, pixels_in_flight and save_priors are
    not used (results are downloads; the sidecars are always written); captions is refused (type the caption in
    the page instead)."""

    output_dir: str = ""  # not used
    max_upload_mb: int = field(default=50, metadata={"min": 1})  # larger uploads are refused by the page
    max_video_frames: int = field(default=1500, metadata={"min": 0})  # longer videos are refused; 0: no limit

    def config_checks(self):
        if self.captions is not None:
            yield "captions", "is not used by the demo: edit each image's caption in the page"


@dataclass
class PriorEdits:
    """What the user changed in the priors panel of one image; None leaves that part as computed."""

    caption: str | None = None  # "" removes the caption
    category: str | None = None  # "" removes the category
    instances_on: list[int] | None = None  # indices of the instances kept; None keeps all


@dataclass
class Upload:
    """One readable upload and its current results."""

    name: str  # the uploaded file's name, unique within the run; its seeds hash it as colorize hashes a file's name
    luminance: Luminance  # the exact L, (1, 1, H, W) float32
    alpha: np.ndarray | None  # (H, W) uint8, kept in the PNGs
    gray: PIL.Image.Image  # the gray the model sees (the input's L), for the before/after view
    available: ImagePriors | None = None  # computed (or given) priors: what editing starts from
    used: ImagePriors | None = None  # the priors of the current results, with the prompt used in extra["prompt"]
    results: list[PIL.Image.Image] = field(default_factory=list)  # one per sample, at the input's size
    seeds: list[int] = field(default_factory=list)  # the generator seed of each sample
    settings: DemoConfig | None = None  # what the results were made with
    files: list[Path] = field(default_factory=list)  # the result PNGs, then the priors sidecar
    edits: PriorEdits | None = None  # the edits of the last re-run (None: as computed)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), PIL's order."""
        height, width = self.luminance.shape
        return width, height


@dataclass
class Session:
    """The uploads of one Colorize press (and the re-runs of its images), with what the page reports."""

    uploads: list[Upload]
    messages: list[str]  # one line per file that could not be read or colorized, and per note about a file
    archive: Path | None = None  # the zip of every download, when there is more than one picture or video
    videos: list[VideoResult] = field(default_factory=list)

    def downloads(self) -> list[Path]:
        """What the page offers to download: every result PNG and MP4, and the zip (or, for one picture, the
        sidecar)."""
        pictures = [f for u in self.uploads for f in u.files if f.suffix == ".png"]
        videos = [v.path for v in self.videos]
        if self.archive is not None:
            return [*pictures, *videos, self.archive]
        return [*(f for u in self.uploads for f in u.files), *videos]


# -- uploads ------------------------------------------------------------------------------------------------------
def unique_names(paths: Sequence[str | Path]) -> list[str]:
    """The uploaded files' names, a number added to a stem already taken (their PNGs must not collide)."""
    names, stems = [], set()
    for path in paths:
        name = Path(path).name
        stem, suffix, count = Path(name).stem, Path(name).suffix, 1
        while stem.lower() in stems:
            count += 1
            stem = f"{Path(name).stem}_{count}"
        stems.add(stem.lower())
        names.append(stem + suffix)
    return names


def read_upload(path: str | Path, name: str, max_pixels: int, device) -> tuple[Upload, list[str]]:
    """An upload reduced to its exact L and alpha, with the notes about it; a DemoError of one line naming the
    file (as uploaded) and the reason when it is not a usable image (not an image, truncated, too large, ...)."""
    try:
        image = read_image(path, max_pixels)
    except ImageReadError as err:
        raise DemoError(f"{name}: {err.reason}") from None
    except Exception as err:  # noqa: BLE001 - whatever a decoder raises is a message, never a traceback
        raise DemoError(f"{name}: cannot read: {type(err).__name__}: {error_line(err)}") from None
    notes = [f"{name}: warning: {w}" for w in image.warnings]
    if image.frames > 1:
        notes.append(f"{name}: {image.frames} frames; only the first is colorized")
    luminance = Luminance(luminance_of(image.rgb, device))
    alpha = None if image.alpha is None else np.rint(image.alpha * 255).astype(np.uint8)
    return Upload(name, luminance, alpha, gray_pil(luminance)), notes


def edited_priors(available: ImagePriors | None, edits: PriorEdits) -> ImagePriors:
    """The priors to run with: `available` with the caption and category replaced and instances switched off."""
    base = available or ImagePriors()
    caption = base.caption if edits.caption is None else (edits.caption.strip() or None)
    category = base.category if edits.category is None else (edits.category.strip() or None)
    instances = base.instances
    if instances is not None and edits.instances_on is not None:
        keep = sorted(i for i in set(edits.instances_on) if 0 <= i < len(instances))
        instances = None if not keep else Instances(instances.masks[keep], [instances.labels[i] for i in keep],
                                                    [instances.scores[i] for i in keep])
    return ImagePriors(caption=caption, category=category, instances=instances)


# -- the model ----------------------------------------------------------------------------------------------------
class Colorizer:
    """The model, loaded once, and the runs the page asks for (one at a time: the page queues them)."""

    def __init__(self, config: DemoConfig, workdir: str | Path):
        """Load the model and the prior generators `config` asks for; a UsageError (exit 2) when either fails."""
        self.config = config
        on_gpu = config.device == "auto" and accelerator_available()
        self.device = torch.device("cuda" if on_gpu else "cpu") if config.device == "auto" else torch.device(
            config.device)
        self.dtype = (torch.bfloat16 if self.device.type == "cuda" else torch.float32) if config.dtype == "auto" \
            else DTYPES[config.dtype]
        self.pipe = load_model(replace(config, scheduler=None), self.device, self.dtype)
        self.model_scheduler = self.pipe.scheduler  # the folder's own; the page may pick another per run
        prepare_priors(self.pipe, config, self.device, self.dtype)  # generators load now, not at the first press
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)

    @property
    def method(self) -> str:
        return "SeAda" if type(self.pipe).__name__ == "SeAdaPipeline" else "ColorDiff"

    def settings(self, **values) -> DemoConfig:
        """The start settings with the page's values (same names as ColorizeConfig's keys), checked as config
        files are; a DemoError names the setting. Whole numbers typed into number boxes arrive as floats."""
        for key in ("steps", "seed", "resolution", "num_samples"):
            if isinstance(values.get(key), float) and float(values[key]).is_integer():
                values[key] = int(values[key])
        if values.get("prompt") == "":
            values["prompt"] = None  # an empty override box: the automatic prompt
        try:
            settings = replace(self.config, **values)
            check_settings(settings)
        except (ConfigError, TypeError) as err:
            raise DemoError(error_line(err)) from None
        for key, kind in (("steps", int), ("seed", int), ("resolution", int), ("num_samples", int)):
            if not isinstance(getattr(settings, key), kind):
                raise DemoError(f"{key} must be a whole number, got {getattr(settings, key)!r}")
        return settings

    def start(self, paths: Sequence[str | Path], settings: DemoConfig, report: Report | None = None,
              priors: Sequence[ImagePriors | None] | None = None) -> Session:
        """Read and colorize uploaded files; `priors` (one per image) replaces the prior generators' output, and so
        does an uploaded `NAME.priors.json` sidecar (as colorize --save-priors writes) for the image NAME.*. Videos
        are colorized after the images."""
        sidecars = {Path(p).name[: -len(SIDECAR)]: Path(p) for p in paths if str(p).lower().endswith(SIDECAR)}
        media = [p for p in paths if not str(p).lower().endswith(SIDECAR)]
        named = list(zip(media, unique_names(media), strict=True))
        images = [(p, name) for p, name in named if not is_video(p)]
        videos = [(p, name) for p, name in named if is_video(p)]
        if not media:
            raise DemoError("no photo uploaded: add one or more images (or videos) first")
        prune(self.workdir, KEEP_SECONDS)
        uploads, messages, given = [], [], []
        for index, (path, name) in enumerate(images):
            try:
                upload, notes = read_upload(path, name, settings.max_pixels, self.device)
            except DemoError as err:
                messages.append(str(err))
                continue
            uploads.append(upload)
            messages += notes
            sidecar = sidecars.pop(Path(path).stem, None)
            if priors is not None:
                given.append(priors[index])
            elif sidecar is not None:
                given.append(_sidecar_priors(sidecar, upload, messages))
            else:
                given.append(AUTOMATIC)
        messages += [f"{p.name}: no uploaded image is named {stem}.*; ignored" for stem, p in sidecars.items()]
        if not uploads and not videos:
            raise DemoError("no upload is a usable image: " + "; ".join(messages))
        kinds = self._kinds(settings) if videos or any(p is AUTOMATIC for p in given) else ()
        session = Session([], messages)
        total = len(uploads) * settings.steps
        for index, (upload, image_priors) in enumerate(zip(uploads, given, strict=True)):
            try:
                if image_priors is AUTOMATIC:
                    image_priors = self.pipe.compute_priors([upload.luminance], kinds)[0] if kinds else None
                upload.available = image_priors
                self._colorize(upload, settings, image_priors, _offset(report, index * settings.steps, total))
                self._write(upload)
            except (RuntimeError, ValueError, OSError) as err:
                messages.append(f"{upload.name}: colorization failed: {type(err).__name__}: {error_line(err)}")
                continue
            session.uploads.append(upload)
        for path, name in videos:
            try:
                session.videos.append(self._colorize_video(Path(path), name, settings, kinds, report))
            except VideoUploadError as err:
                messages.append(str(err))
            except (RuntimeError, ValueError, OSError) as err:
                messages.append(f"{name}: colorization failed: {type(err).__name__}: {error_line(err)}")
        if not session.uploads and not session.videos:
            raise DemoError("; ".join(messages))
        self._archive(session)
        return session

    def rerun(self, session: Session, index: int, settings: DemoConfig, edits: PriorEdits,
              report: Report | None = None) -> Session:
        """Colorize upload `index` of `session` again with its priors edited; the downloads are rewritten."""
        if not 0 <= index < len(session.uploads):
            raise DemoError("no such image: colorize an upload first")
        upload = session.uploads[index]
        try:
            self._colorize(upload, settings, edited_priors(upload.available, edits), report)
            upload.edits = edits
        except (RuntimeError, ValueError) as err:
            raise DemoError(f"{upload.name}: colorization failed: {error_line(err)}") from None
        self._write(upload)
        self._archive(session)
        return session

    # -- pieces -------------------------------------------------------------------------------------------------
    def _kinds(self, settings: DemoConfig) -> tuple[str, ...]:
        """The prior kinds a run computes (as colorize decides them), their generators loaded."""
        try:
            return prepare_priors(self.pipe, replace(settings, priors_config=None), self.device, self.dtype)
        except UsageError as err:
            raise DemoError(str(err)) from None

    def _colorize(self, upload: Upload, settings: DemoConfig, priors: ImagePriors | None, report) -> None:
        """One pipeline call for every sample of `upload`, with the seeds and arguments colorize uses."""
        count = settings.num_samples
        seeds = [sample_seed(settings.seed, Path(upload.name), k) for k in range(count)]
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        self._use_scheduler(settings)
        with reporting_steps(self.pipe, report, settings.steps):
            output = self.pipe([upload.luminance] * count, prompt=settings.prompt,
                               num_inference_steps=settings.steps, guidance_scale=settings.guidance_scale,
                               generator=generators, resolution=settings.resolution,
                               keep_luminance=settings.keep_luminance, output_type="pil",
                               priors=[priors] * count if priors is not None else "none",
                               seg_strength=settings.seg_strength)
        upload.results, upload.seeds, upload.settings = output.images, seeds, settings
        upload.used = output.priors[0] if output.priors else None

    def _colorize_video(self, path: Path, name: str, settings: DemoConfig, kinds, report) -> VideoResult:
        """One uploaded video, as colorize-video colorizes it (the run's scheduler and prior kinds)."""
        self._use_scheduler(settings)
        frames = None if report is None else (lambda done, total: report(done, total, unit="frames"))
        return colorize_video(self.pipe, kinds, path, name, settings, self.workdir, settings.max_video_frames, frames)

    def _use_scheduler(self, settings: DemoConfig) -> None:
        """The run's sampler on the pipeline: the model folder's own, or the named one built from its config."""
        self.pipe.scheduler = self.model_scheduler if settings.scheduler is None else make_scheduler(
            settings.scheduler, self.model_scheduler.config)

    def _write(self, upload: Upload) -> None:
        """The upload's PNGs and sidecar, in a folder of their own (earlier download links stay valid)."""
        folder = self.workdir / uuid.uuid4().hex
        stem, count = Path(upload.name).stem, len(upload.results)
        paths = [folder / (f"{stem}.png" if count == 1 else f"{stem}_{k}.png") for k in range(count)]
        for path, image in zip(paths, upload.results, strict=True):
            write_image(path, np.asarray(image), alpha=upload.alpha)
        settings, sidecar = upload.settings, priors_sidecar(folder, Path(upload.name))
        used = upload.used or ImagePriors(extra={"prompt": settings.prompt or ""})
        used = replace(used, extra={**used.extra, "seed": settings.seed, "num_samples": count})
        write_priors_sidecar(sidecar, Path(upload.name), used, settings, scheduler_name(self.pipe.scheduler))
        upload.files = [*paths, sidecar]

    def _archive(self, session: Session) -> None:
        """The zip of every download (PNGs, sidecars, MP4s), when there is more than one picture or video; written
        atomically."""
        files = [f for u in session.uploads for f in u.files] + [v.path for v in session.videos]
        if sum(f.suffix != ".json" for f in files) < 2:
            session.archive = None
            return
        path = self.workdir / uuid.uuid4().hex / ZIP_NAME
        with atomic_write(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
            for file in files:
                archive.write(file, arcname=file.name)
        session.archive = path


def _sidecar_priors(path: Path, upload: Upload, messages: list[str]) -> ImagePriors | None:
    """The caption, category and instances of an uploaded priors sidecar; AUTOMATIC (with a message) when it
    cannot be used for `upload`."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        loaded = ImagePriors.from_dict(data if isinstance(data, dict) else {})
    except (OSError, ValueError, KeyError, TypeError) as err:
        messages.append(f"{path.name}: not a priors sidecar ({error_line(err)}); priors computed instead")
        return AUTOMATIC
    size = tuple(upload.luminance.shape)
    if loaded.instances is not None and tuple(loaded.instances.masks.shape[-2:]) != size:
        messages.append(f"{path.name}: masks are {tuple(loaded.instances.masks.shape[-2:])} (H, W) but {upload.name} "
                        f"is {size}; priors computed instead")
        return AUTOMATIC
    return ImagePriors(caption=loaded.caption, category=loaded.category, instances=loaded.instances)


@contextmanager
def reporting_steps(pipe, report: Report | None, steps: int):
    """Within: the pipeline's per-step progress bar (diffusers' progress_bar) calls report(done, steps) instead."""
    if report is None:
        yield
        return
    done = 0

    class Bar:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n: int = 1) -> None:
            nonlocal done
            done += n
            report(done, steps)

    pipe.progress_bar = lambda iterable=None, total=None: Bar()
    try:
        yield
    finally:
        pipe.__dict__.pop("progress_bar", None)  # the class's method again


def _offset(report: Report | None, before: int, total: int) -> Report | None:
    """A report for one image of several: its steps counted after the `before` steps of the earlier images."""
    return None if report is None else (lambda done, steps: report(before + done, total))


def prune(folder: Path, age: float) -> None:
    """Remove the result folders under `folder` untouched for `age` seconds."""
    limit = time.time() - age
    for entry in folder.iterdir() if folder.is_dir() else ():
        try:
            if entry.is_dir() and entry.stat().st_mtime < limit:
                shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            continue
