"""Writing colorized frames: each shot is encoded into a chunk of its own (a NUT file of the final codec's packets
with the input's timestamps, or PNG frames), and the chunks are muxed into the output with the input's audio and
subtitle streams copied as they are (no re-encoding).

Every chunk starts a fresh encoder, so a chunk's bytes depend only on its own frames and a resumed run muxes the
same packets as an uninterrupted one. H.264 runs without B-frames: timestamps then stay monotonic across chunks.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image

from colordiff.video.io import ClipInfo, copied_streams, write_display_matrix

FORMAT_SUFFIX = {"mp4": ".mp4", "mov": ".mov", "mkv": ".mkv", "webm": ".webm", "avi": ".avi", "frames": ""}
MUXERS = {"mp4": "mp4", "mov": "mov", "mkv": "matroska", "webm": "webm", "avi": "avi"}


@dataclass
class Encoding:
    """The output's container, codec and options."""

    kind: str  # a FORMAT_SUFFIX key
    codec: str = "png"  # libx264 | libvpx-vp9 | ffv1 | png (frames)
    pix_fmt: str = "rgb24"
    options: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # one line each, said once per input

    @property
    def suffix(self) -> str:
        return FORMAT_SUFFIX[self.kind]


def plan_encoding(info: ClipInfo, settings) -> Encoding:
    """The container (the input's own for format=auto), codec and pixel format of an output (OutputSettings)."""
    kind = info.kind if settings.format == "auto" else settings.format
    if kind == "frames":
        return Encoding("frames", options={"compress_level": str(settings.png_compression)})
    if settings.lossless:
        notes = [] if kind == "mkv" else [f"lossless FFV1 is written as MKV, not {kind.upper()}"]
        return Encoding("mkv", "ffv1", "bgr0", {"slices": "4", "level": "3"}, notes)
    even = info.width % 2 == 0 and info.height % 2 == 0
    pix_fmt = "yuv420p" if even else "yuv444p"
    notes = [] if even else [f"{info.width} x {info.height} has an odd side, which 4:2:0 cannot hold: encoded 4:4:4"]
    if kind == "webm":  # WebM holds VP8/VP9/AV1 only
        return Encoding("webm", "libvpx-vp9", pix_fmt, {"crf": str(settings.crf), "b": "0", "row-mt": "0",
                                                        "deadline": "good", "cpu-used": "4"}, notes)
    return Encoding(kind, "libx264", pix_fmt, {"crf": str(settings.crf), "preset": settings.preset, "bf": "0"}, notes)


class ChunkWriter:
    """One shot's frames, encoded into `path` (a temp name the caller renames when the shot is whole)."""

    def __init__(self, path: Path, info: ClipInfo, encoding: Encoding, first_index: int):
        self.path, self.info, self.encoding, self.index = path, info, encoding, first_index
        self.container = self.stream = None
        if encoding.kind == "frames":
            path.mkdir(parents=True, exist_ok=True)
            return
        import av

        self.container = av.open(str(path), "w", format="nut")
        stream = self.container.add_stream(encoding.codec, rate=info.rate, options=dict(encoding.options))
        stream.width, stream.height, stream.pix_fmt = info.width, info.height, encoding.pix_fmt
        stream.time_base = info.time_base
        stream.codec_context.time_base = info.time_base
        stream.codec_context.thread_count = 1 if encoding.codec == "libvpx-vp9" else 0
        if info.sample_aspect_ratio:
            stream.codec_context.sample_aspect_ratio = info.sample_aspect_ratio
        self.stream = stream

    def write(self, pts: int, rgb: np.ndarray) -> None:
        """Add the next frame: (H, W, 3) uint8 RGB at timestamp pts (the input's time base)."""
        if self.container is None:
            name = self.info.frame_names[self.index] if self.info.frame_names else f"frame_{self.index + 1:06d}.png"
            PIL.Image.fromarray(rgb).save(self.path / (Path(name).stem + ".png"), format="PNG",
                                          compress_level=int(self.encoding.options["compress_level"]))
        else:
            import av

            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts, frame.time_base = pts, self.info.time_base
            self.container.mux(self.stream.encode(frame))
        self.index += 1

    def close(self) -> None:
        if self.container is not None:
            self.container.mux(self.stream.encode(None))  # flush the encoder
            self.container.close()

    def abort(self) -> None:
        if self.container is not None:
            try:
                self.container.close()
            except Exception:  # noqa: BLE001 - the chunk is discarded anyway
                pass


def _packets(container, stream, order: int) -> Iterator[tuple[float, int, int, object]]:
    """(time in seconds, stream order, sequence, packet) of a stream's packets, in demuxing order."""
    for seq, packet in enumerate(container.demux(stream)):
        stamp = packet.dts if packet.dts is not None else packet.pts
        if stamp is None:  # the flushing packet demux ends with
            continue
        yield float(stamp * packet.time_base), order, seq, packet


def _chunk_packets(chunks: list[Path]) -> Iterator[tuple[float, int, int, object]]:
    import av

    for chunk in chunks:
        with av.open(str(chunk)) as container:
            yield from _packets(container, container.streams.video[0], 0)


def assemble(chunks: list[Path], info: ClipInfo, encoding: Encoding, target: Path, say) -> None:
    """Mux the chunks' video packets and the input's audio and subtitle packets (copied) into `target` (a temp
    path, in encoding's container), interleaved by time; the input's rotation is kept in MP4 and MOV."""
    import av

    out = av.open(str(target), "w", format=MUXERS[encoding.kind])
    source = None
    try:
        with av.open(str(chunks[0])) as first:
            video = out.add_stream_from_template(first.streams.video[0])
        video.time_base = info.time_base
        if info.sample_aspect_ratio:
            video.codec_context.sample_aspect_ratio = info.sample_aspect_ratio
        streams = [_chunk_packets(chunks)]
        if info.kind != "frames":
            source, copies = copied_streams(info.path)
            for order, stream in enumerate(copies, start=1):
                name = stream.codec_context.name
                if name not in out.supported_codecs:
                    say(f"{stream.type} stream #{stream.index} ({name}) cannot be stored in "
                        f"{encoding.kind.upper()}; left out")
                    continue
                copy = out.add_stream_from_template(stream)
                streams.append(((t, o, s, p, copy) for t, o, s, p in _packets(source, stream, order)))
        for item in heapq.merge(*streams, key=lambda entry: entry[:3]):
            packet = item[3]
            packet.stream = item[4] if len(item) > 4 else video
            out.mux(packet)
    finally:
        out.close()
        if source is not None:
            source.close()
    if info.display_matrix is not None and encoding.kind in ("mp4", "mov"):
        write_display_matrix(target, info.display_matrix)
