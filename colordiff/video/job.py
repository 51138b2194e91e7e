"""`colordiff colorize-video`: colorize videos and frame folders shot by shot, resumably.

Each input is decoded frame by frame; a cut starts a new shot; each shot's frames are colorized (keyframes by the
model, the rest along the flow, or every frame by the model with temporal=none) and encoded into a chunk of its own,
renamed into OUT/.NAME.parts/ when the shot is whole and recorded in its manifest. A killed run resumes at the first
unfinished shot (the shots before it are not recomputed) and gives the same file as an uninterrupted one: shot k's
output depends only on its frames, the settings and its seed, sample_seed(seed, relative path, k). When every shot
is done the chunks are muxed with the input's audio and subtitles into a temp file renamed onto OUT/NAME.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from colordiff import claims
from colordiff.color import split_luminance
from colordiff.colorize_common import (
    check_output_dir,
    load_model,
    prepare_priors,
    report,
    resolve_device_dtype,
    sample_seed,
)
from colordiff.config import error_line, to_yaml
from colordiff.devices import accelerator_available
from colordiff.errors import EXIT_FAILURES, EXIT_INTERRUPTED, EXIT_OK, UsageError
from colordiff.files import remove_stale_temps, scan_folder
from colordiff.images import Luminance
from colordiff.io import atomic_folder, atomic_write
from colordiff.video.encode import FORMAT_SUFFIX, ChunkWriter, assemble, plan_encoding
from colordiff.video.flow import make_flow
from colordiff.video.io import CONTAINERS, VIDEO_SUFFIXES, VideoReadError, is_frames_folder, open_clip
from colordiff.video.propagate import FlowShot, PerFrameShot, analyse
from colordiff.video.shots import CutDetector


@dataclass
class Clip:
    """One input and its output."""

    source: Path
    relative: Path
    target: Path

    @property
    def parts(self) -> Path:
        """The hidden folder of the finished shots' chunks and their manifest."""
        return self.target.parent / f".{self.target.name}.parts"


def output_kind(source: Path, settings) -> str:
    """The output's container for an input (the same rule as encode.plan_encoding)."""
    kind = settings.format
    if kind == "auto":
        kind = "frames" if source.is_dir() else CONTAINERS.get(source.suffix.lower(), "mkv")
    return "mkv" if settings.lossless and kind != "frames" else kind


def collect_clips(config) -> tuple[list[Clip], list[tuple[Path, str]]]:
    """Every input as a clip: a video file, a folder of numbered frames, or the video files of a folder
    (recursively); and the folder entries that cannot be read."""
    out, clips, odd = Path(config.output_dir), [], []
    for name in config.inputs:
        path = Path(name)
        if is_frames_folder(path):
            found = [(path, Path(path.name))]
        elif path.is_dir():
            scan = scan_folder(path, VIDEO_SUFFIXES, exclude=out)
            found, odd = [(f, f.relative_to(path)) for f in scan.files], odd + scan.odd
        elif os.path.lexists(path):
            found = [(path, Path(path.name))]
        else:
            raise UsageError(f"input not found: {name}")
        for source, relative in found:
            kind = output_kind(source, config.output)
            target = out / (relative if kind == "frames" else relative.with_suffix(FORMAT_SUFFIX[kind]))
            clips.append(Clip(source, relative, target))
    return clips, odd


def run_colorize_video(config) -> int:
    """Colorize every input clip into config.output_dir; returns the exit status (0 all done, 1 some input failed,
    130 interrupted). Launched processes (`accelerate launch`) take every n-th clip."""
    from accelerate import PartialState

    state = PartialState(cpu=config.device == "cpu" or (config.device == "auto" and not accelerator_available()))
    clips, odd = collect_clips(config)
    check_output_dir(Path(config.output_dir))
    say = state.is_main_process
    for path, reason in odd if say else ():
        report(f"{path}: {reason}; skipped")
    if say:
        remove_stale_temps(Path(config.output_dir), recursive=True)
    flow = None
    if config.temporal == "flow":
        flow = make_flow(config.flow.method, config.flow.raft_weights, config.flow.raft_iters)  # usage errors now
    todo = [c for c in clips if config.overwrite or not c.target.exists()]
    done, skipped, failed, status = 0, len(clips) - len(todo), len(odd), EXIT_OK
    todo = todo[state.process_index :: state.num_processes]
    bar = tqdm(total=0, unit="frame", disable=None)
    try:
        if todo:
            device, dtype = resolve_device_dtype(config.device, config.dtype, state)
            pipe = load_model(config, device, dtype)
            kinds = prepare_priors(pipe, config, device, dtype)
            colorizer = FrameColorizer(pipe, config, kinds)
        for clip in todo:
            if not claims.acquire(clip.target):
                skipped += 1
                continue
            try:
                colorize_clip(clip, colorizer, flow, config, bar)
                done += 1
            except VideoReadError as err:
                report(str(err))
                failed += 1
            except (OSError, ValueError, RuntimeError) as err:
                report(f"{clip.source}: colorization failed: {type(err).__name__}: {error_line(err)}")
                failed += 1
            finally:
                claims.release(clip.target)
    except KeyboardInterrupt:
        status = EXIT_INTERRUPTED
    finally:
        bar.close()
    where = f" [process {state.process_index + 1}/{state.num_processes}]" if state.num_processes > 1 else ""
    stopped = ", interrupted" if status == EXIT_INTERRUPTED else ""
    print(f"colordiff: {done} videos colorized, {skipped} skipped (already done), {failed} failed{stopped}{where}",
          file=sys.stderr)
    return EXIT_FAILURES if status == EXIT_OK and failed else status


class FrameColorizer:
    """The pipeline calls of a run: a keyframe's a/b on the grid, or whole frames (temporal=none)."""

    def __init__(self, pipe, config, kinds):
        self.pipe, self.config, self.kinds = pipe, config, kinds

    def _call(self, luminance: list, seed: int, output_type: str):
        images = [Luminance(L) for L in luminance]
        priors = self.pipe.compute_priors(images, self.kinds) if self.kinds else "none"
        c = self.config
        generators = [torch.Generator("cpu").manual_seed(seed) for _ in images]  # one seed per shot
        with torch.inference_mode():
            return self.pipe(images, prompt=c.prompt, num_inference_steps=c.steps, guidance_scale=c.guidance_scale,
                             generator=generators, resolution=c.resolution, keep_luminance=True,
                             output_type=output_type, priors=priors, seg_strength=c.seg_strength).images

    def keyframe(self, seed: int):
        """colorize(L_grid (1, 1, h, w)) -> the model's a/b on the grid (2, h, w)."""
        return lambda L: split_luminance(self._call([L], seed, "pt")[0][None])[1][0].float()

    def frames(self, seed: int):
        """colorize([L (1, 1, H, W), ...]) -> [(H, W, 3) uint8, ...], each frame at full size."""
        return lambda Ls: [np.asarray(image) for image in self._call(Ls, seed, "pil")]


def fingerprint(clip: Clip, config) -> str:
    """What a clip's finished shots depend on: the settings (not where they go) and the input file's identity."""
    settings = to_yaml(replace(config, inputs=[], output_dir="", overwrite=False))
    st = clip.source.stat()
    identity = f"{clip.relative.as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\0{os.path.abspath(config.model)}"
    return hashlib.sha256((settings + identity).encode()).hexdigest()


def colorize_clip(clip: Clip, colorizer: FrameColorizer, flow, config, bar) -> None:
    """Colorize one clip: skip the shots a killed run finished, colorize and chunk the rest, then assemble."""
    info, frames = open_clip(clip.source, config.output.frame_rate)
    encoding = plan_encoding(info, config.output)
    for note in encoding.notes:
        report(f"{clip.source}: {note}")
    manifest = _manifest(clip, fingerprint(clip, config))
    resume = sum(shot["count"] for shot in manifest["shots"])
    bar.total += info.frames or 0
    bar.update(min(resume, info.frames or resume))
    bar.refresh()
    detector, shot, writer, count, seen = CutDetector(config.shots), None, None, 0, 0

    def close_shot():
        nonlocal count, writer
        for _, pts, rgb in shot.finish():
            writer.write(pts, rgb)
            count += 1
            bar.update(1)
        _finish_chunk(clip, manifest, writer, count)
        writer = None

    try:
        for frame in frames:
            seen += 1
            if frame.index < resume:
                continue
            item = analyse(frame.index, frame.pts, frame.rgb, config.flow.grid)
            if detector(item.gray):
                if shot is not None:
                    close_shot()
                k = len(manifest["shots"])
                seed = sample_seed(config.seed, clip.relative, k)
                shot = (FlowShot(colorizer.keyframe(seed), flow, config) if flow is not None
                        else PerFrameShot(colorizer.frames(seed), config.batch_size))
                writer, count = _start_chunk(clip, k, info, encoding, frame.index), 0
            for _, pts, rgb in shot.push(item):
                writer.write(pts, rgb)
                count += 1
                bar.update(1)
        if shot is not None:
            close_shot()
    except BaseException:  # a failed or interrupted shot: its encoder (and threads) end now, not when collected
        if writer is not None:
            writer.abort()
        raise
    finally:
        frames.close()  # the input's decoder too
    if seen == 0:
        raise VideoReadError(clip.source, "no frames")
    _assemble(clip, manifest, info, encoding)


def _manifest(clip: Clip, key: str) -> dict:
    """The finished shots of an unfinished run with the same settings and input, or a fresh start."""
    path = clip.parts / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
        if manifest.get("fingerprint") == key:
            if manifest["shots"]:
                report(f"{clip.source}: resuming after {len(manifest['shots'])} finished shots")
            return manifest
        report(f"{clip.source}: the settings or the input changed since the unfinished run; starting over")
    except (OSError, ValueError, KeyError):
        pass
    shutil.rmtree(clip.parts, ignore_errors=True)
    clip.parts.mkdir(parents=True)
    manifest = {"fingerprint": key, "shots": []}
    _write_manifest(clip, manifest)
    return manifest


def _write_manifest(clip: Clip, manifest: dict) -> None:
    with atomic_write(clip.parts / "manifest.json") as tmp:
        tmp.write_text(json.dumps(manifest))


def _chunk_path(clip: Clip, k: int, kind: str) -> Path:
    return clip.parts / (f"shot_{k:06d}" if kind == "frames" else f"shot_{k:06d}.nut")


def _start_chunk(clip: Clip, k: int, info, encoding, first: int) -> ChunkWriter:
    final = _chunk_path(clip, k, encoding.kind)
    partial = final.with_name(final.name + ".partial")  # what a killed run left of this shot is overwritten
    shutil.rmtree(partial, ignore_errors=True) if partial.is_dir() else partial.unlink(missing_ok=True)
    return ChunkWriter(partial, info, encoding, first)


def _finish_chunk(clip: Clip, manifest: dict, writer: ChunkWriter, count: int) -> None:
    """The shot is whole: close its chunk, rename it into place and record it."""
    writer.close()
    os.replace(writer.path, writer.path.with_name(writer.path.name.removesuffix(".partial")))
    manifest["shots"].append({"first": writer.index - count, "count": count})
    _write_manifest(clip, manifest)


def _assemble(clip: Clip, manifest: dict, info, encoding) -> None:
    """Every shot is done: the output appears whole (temp name, then rename) and the chunks go."""
    chunks = [_chunk_path(clip, k, encoding.kind) for k in range(len(manifest["shots"]))]
    if encoding.kind == "frames":
        with atomic_folder(clip.target) as staging:
            staging.mkdir()
            for chunk in chunks:
                for file in sorted(chunk.iterdir()):
                    os.replace(file, staging / file.name)
    else:
        with atomic_write(clip.target) as tmp:
            assemble(chunks, info, encoding, tmp, lambda line: report(f"{clip.source}: {line}"))
    shutil.rmtree(clip.parts, ignore_errors=True)

