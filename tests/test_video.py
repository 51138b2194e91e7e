"""`colordiff colorize-video` / `evaluate-video` end to end with the tiny model on clips made from real photos."""

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from colordiff.cli import main
from colordiff.color import rgb_to_luminance
from colordiff.video.io import write_display_matrix
from colordiff.video.synthetic import camera_frames, write_clip

pytestmark = pytest.mark.usefixtures("one_thread")
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "photos"
FAST = ["--steps", "2", "--resolution", "64"]


def _photo(name: str) -> np.ndarray:
    return np.asarray(Image.open(EXAMPLES / name).convert("RGB"))


@pytest.fixture(scope="module")
def pan(tmp_path_factory) -> Path:
    """A 12-frame camera pan over a real photo, 128 x 96, 12 fps, with an AAC audio track."""
    path = tmp_path_factory.mktemp("clips") / "pan.mp4"
    return write_clip(path, camera_frames(_photo("kodim05.jpg"), (128, 96), 12, "pan"), audio_seconds=1.0)


def _colorize(inputs, out, model, *extra) -> int:
    return main(["colorize-video", *map(str, inputs), "-o", str(out), "--model", str(model), *FAST, *extra])


def _decode(path: Path) -> tuple[list[float], list[np.ndarray], av.video.stream.VideoStream]:
    """Frame times (s) and RGB frames of a video, and its stream."""
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        frames = [(float(f.time), f.to_ndarray(format="rgb24")) for f in c.decode(stream)]
    return [t for t, _ in frames], [x for _, x in frames], stream


def _L(rgb: np.ndarray) -> np.ndarray:
    return rgb_to_luminance(torch.from_numpy(np.array(rgb)).permute(2, 0, 1).double() / 255)[0].numpy()  # (H, W)


def _streams(path: Path) -> list[tuple[str, str]]:
    with av.open(str(path)) as c:
        return [(s.type, s.codec_context.name) for s in c.streams]


def _warp_error(path: Path) -> float:
    from colordiff.video.config import EvalVideoConfig
    from colordiff.video.evaluate import evaluate_video

    return evaluate_video(EvalVideoConfig(pred=str(path)))["warp_error_ab"]


def test_pan_keeps_frames_timestamps_size_audio_and_flow_flickers_less(pan, tmp_path, tiny_model_dir):
    assert _colorize([pan], tmp_path / "flow", tiny_model_dir) == 0
    assert _colorize([pan], tmp_path / "none", tiny_model_dir, "--temporal", "none") == 0
    times, frames, _ = _decode(pan)
    for mode in ("flow", "none"):
        out = tmp_path / mode / "pan.mp4"
        out_times, out_frames, stream = _decode(out)
        assert out_times == times
        assert out_frames[0].shape == frames[0].shape == (96, 128, 3)
        assert stream.codec_context.pix_fmt == "yuv420p" and stream.codec_context.name == "h264"
        assert _streams(out) == [("video", "h264"), ("audio", "aac")]
        # yuv420p keeps L up to its chroma subsampling and rounding
        assert np.mean([np.abs(_L(a) - _L(b)).mean() for a, b in zip(frames, out_frames, strict=True)]) < 2.0
        assert sorted(p.name for p in (tmp_path / mode).iterdir()) == ["pan.mp4"]  # no chunk or temp left
    flow, plain = _warp_error(tmp_path / "flow" / "pan.mp4"), _warp_error(tmp_path / "none" / "pan.mp4")
    assert flow < plain / 3, (flow, plain)


def test_audio_packets_are_copied_unchanged(pan, tmp_path, tiny_model_dir):
    assert _colorize([pan], tmp_path, tiny_model_dir, "keyframes.interval=4") == 0

    def audio(path):
        with av.open(str(path)) as c:
            return [(p.pts, bytes(p)) for p in c.demux(c.streams.audio[0]) if p.size]

    assert audio(tmp_path / "pan.mp4") == audio(pan) and len(audio(pan)) > 10


def test_lossless_keeps_every_frames_luma_on_a_zoom(tmp_path, tiny_model_dir, capsys):
    clip = write_clip(tmp_path / "zoom.mp4", camera_frames(_photo("kodim23.jpg"), (96, 64), 10, "zoom"))
    assert _colorize([clip], tmp_path / "out", tiny_model_dir, "--lossless", "--smooth") == 0
    assert "lossless FFV1 is written as MKV" in capsys.readouterr().err
    times, frames, _ = _decode(clip)
    out_times, out_frames, stream = _decode(tmp_path / "out" / "zoom.mkv")
    assert stream.codec_context.name == "ffv1" and len(out_frames) == len(frames) == 10
    assert np.allclose(out_times, times, atol=1e-3)  # MKV stores milliseconds
    for a, b in zip(frames, out_frames, strict=True):
        assert np.abs(_L(a) - _L(b)).max() < 1.0  # the input's L, up to 8-bit rounding
    chroma = np.mean([np.abs(b.astype(int) - b.mean(-1, keepdims=True)).mean() for b in out_frames])
    assert chroma > 1.0  # colored, not gray


def _lossless_frames(path: Path) -> list[np.ndarray]:
    return _decode(path)[1]


def test_nothing_propagates_across_a_cut(tmp_path, tiny_model_dir):
    """Two clips that differ only before their cut give the same frames after it."""
    after = list(camera_frames(_photo("kodim23.jpg"), (96, 64), 6, "pan"))
    first = write_clip(tmp_path / "a.mp4", [*camera_frames(_photo("kodim05.jpg"), (96, 64), 6, "pan"), *after],
                       codec="ffv1", pix_fmt="bgr0", container_format="mp4")
    second = tmp_path / "other" / "a.mp4"  # the same relative name: the same seeds
    second.parent.mkdir()
    write_clip(second, [*camera_frames(_photo("darknet_dog.jpg"), (96, 64), 6, "zoom"), *after], codec="ffv1",
               pix_fmt="bgr0", container_format="mp4")
    assert _colorize([first], tmp_path / "out1", tiny_model_dir, "--lossless") == 0
    assert _colorize([second], tmp_path / "out2", tiny_model_dir, "--lossless") == 0
    one, two = _lossless_frames(tmp_path / "out1" / "a.mkv"), _lossless_frames(tmp_path / "out2" / "a.mkv")
    assert all(np.array_equal(x, y) for x, y in zip(one[6:], two[6:], strict=True))
    assert not np.array_equal(one[5], two[5])  # before the cut the clips differ


def test_static_shot_has_no_flicker(tmp_path, tiny_model_dir):
    clip = write_clip(tmp_path / "still.mp4", camera_frames(_photo("kodim05.jpg"), (96, 64), 8, "static"))
    assert _colorize([clip], tmp_path, tiny_model_dir, "--lossless") == 0
    frames = _lossless_frames(tmp_path / "still.mkv")
    assert len(frames) == 8
    assert max(np.abs(a.astype(int) - b.astype(int)).max() for a, b in zip(frames[:-1], frames[1:], strict=True)) <= 2


def test_odd_size_variable_frame_rate_and_one_frame(tmp_path, tiny_model_dir, capsys):
    photo = _photo("kodim05.jpg")
    write_clip(tmp_path / "in" / "odd.mp4", camera_frames(photo, (97, 61), 5, "pan"), pix_fmt="yuv444p")
    stamps = [0, 40, 120, 150, 260, 300, 333, 480]
    vfr = write_clip(tmp_path / "in" / "vfr.mp4", camera_frames(photo, (64, 48), 8, "pan"), pts=stamps,
                     time_base=Fraction(1, 1000))
    one = write_clip(tmp_path / "in" / "one.mkv", camera_frames(photo, (64, 48), 1))
    assert _colorize([tmp_path / "in"], tmp_path / "out", tiny_model_dir) == 0
    assert "odd side" in capsys.readouterr().err
    out_times, out_frames, stream = _decode(tmp_path / "out" / "odd.mp4")
    assert len(out_frames) == 5 and out_frames[0].shape == (61, 97, 3) and stream.codec_context.pix_fmt == "yuv444p"
    assert _decode(tmp_path / "out" / "vfr.mp4")[0] == _decode(vfr)[0] == [s / 1000 for s in stamps]
    assert len(_decode(tmp_path / "out" / "one.mkv")[1]) == 1 == len(_decode(one)[1])


def test_rotation_and_sample_aspect_ratio_are_kept(tmp_path, tiny_model_dir):
    clip = tmp_path / "rotated.mp4"
    write_clip(clip, camera_frames(_photo("kodim05.jpg"), (64, 48), 4, "pan"))
    write_display_matrix(clip, (0, 65536, 0, -65536, 0, 0, 0, 0, 1 << 30))  # as phones store portrait video
    assert _colorize([clip], tmp_path / "out", tiny_model_dir) == 0
    for path in (clip, tmp_path / "out" / "rotated.mp4"):
        with av.open(str(path)) as c:
            assert next(c.decode(video=0)).rotation == -90, path


def test_bad_files_get_one_line_and_the_others_go_on(pan, tmp_path, tiny_model_dir, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "text.mp4").write_text("this is not a video")
    data = pan.read_bytes()
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (folder / "good.mp4").write_bytes(data)
    assert _colorize([folder], tmp_path / "out", tiny_model_dir) == 1
    err = capsys.readouterr().err
    for name in ("text.mp4", "truncated.mp4"):
        lines = [line for line in err.splitlines() if name in line]
        assert len(lines) == 1 and "not a readable video" in lines[0], lines
    assert "1 videos colorized, 0 skipped (already done), 2 failed" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.mp4"]


def test_a_killed_run_resumes_at_the_first_unfinished_shot_and_gives_the_same_file(tmp_path, tiny_model_dir,
                                                                                     monkeypatch, capsys):
    from colordiff.video import job

    clip = write_clip(tmp_path / "cut.mp4", [*camera_frames(_photo("kodim05.jpg"), (96, 64), 5, "pan"),
                                             *camera_frames(_photo("kodim23.jpg"), (96, 64), 5, "zoom")],
                      audio_seconds=0.8)
    assert _colorize([clip], tmp_path / "whole", tiny_model_dir) == 0
    start = job._start_chunk

    def killed_in_second_shot(clip_, k, *args):
        if k == 1:
            raise KeyboardInterrupt
        return start(clip_, k, *args)

    monkeypatch.setattr(job, "_start_chunk", killed_in_second_shot)
    assert _colorize([clip], tmp_path / "resumed", tiny_model_dir) == 130
    assert not (tmp_path / "resumed" / "cut.mp4").exists()  # the output appears only when whole
    manifest = json.loads((tmp_path / "resumed" / ".cut.mp4.parts" / "manifest.json").read_text())
    assert manifest["shots"] == [{"first": 0, "count": 5}]
    monkeypatch.setattr(job, "_start_chunk", start)
    capsys.readouterr()
    assert _colorize([clip], tmp_path / "resumed", tiny_model_dir) == 0
    assert "resuming after 1 finished shots" in capsys.readouterr().err
    assert (tmp_path / "resumed" / "cut.mp4").read_bytes() == (tmp_path / "whole" / "cut.mp4").read_bytes()
    assert sorted(p.name for p in (tmp_path / "resumed").iterdir()) == ["cut.mp4"]


def test_a_shot_that_fails_closes_its_encoder_and_the_next_clip_goes_on(tmp_path, tiny_model_dir, monkeypatch,
                                                                       capsys):
    from colordiff.video import job, propagate

    for name in ("a", "b"):
        write_clip(tmp_path / "in" / f"{name}.mp4", camera_frames(_photo("kodim05.jpg"), (96, 64), 6, "pan"))
    writers, push = [], propagate.FlowShot.push

    class Recording(job.ChunkWriter):
        def __init__(self, *args):
            super().__init__(*args)
            self.ended = None
            writers.append(self)

        def close(self):
            self.ended = "closed"
            super().close()

        def abort(self):
            self.ended = "aborted"
            super().abort()

    def fails_in_clip_a(self, frame):
        if writers[-1].path.parts[-2] == ".a.mp4.parts" and frame.index == 3:
            raise RuntimeError("CUDA out of memory")
        return push(self, frame)

    monkeypatch.setattr(job, "ChunkWriter", Recording)
    monkeypatch.setattr(propagate.FlowShot, "push", fails_in_clip_a)
    assert _colorize([tmp_path / "in"], tmp_path / "out", tiny_model_dir) == 1
    assert "a.mp4: colorization failed: RuntimeError: CUDA out of memory" in capsys.readouterr().err
    assert [w.ended for w in writers] == ["aborted", "closed"]  # the failed shot's encoder is not left open
    assert (tmp_path / "out" / "b.mp4").is_file() and not (tmp_path / "out" / "a.mp4").exists()


def test_frames_folder_in_frames_folder_out(tmp_path, tiny_model_dir):
    folder = tmp_path / "reel"
    folder.mkdir()
    frames = list(camera_frames(_photo("kodim23.jpg"), (80, 56), 6, "pan"))
    for k, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"reel_{k + 1}.png")  # unpadded numbers: 10 sorts after 9
    assert _colorize([folder], tmp_path / "out", tiny_model_dir) == 0
    names = sorted(p.name for p in (tmp_path / "out" / "reel").iterdir())
    assert names == sorted(p.name for p in folder.iterdir())
    for k, frame in enumerate(frames):
        out = np.asarray(Image.open(tmp_path / "out" / "reel" / f"reel_{k + 1}.png"))
        assert np.abs(_L(out) - _L(frame)).max() < 1.0


def test_evaluate_video_with_ground_truth_writes_json(pan, tmp_path, tiny_model_dir, capsys):
    assert _colorize([pan], tmp_path, tiny_model_dir) == 0
    report = tmp_path / "eval.json"
    assert main(["evaluate-video", "--pred", str(tmp_path / "pan.mp4"), "--gt", str(pan), "--json", str(report)]) == 0
    results = json.loads(report.read_text())
    assert results["n_frames"] == 12 and results["n_pairs"] == 11
    assert 5 < results["psnr"] < 60 and results["colorfulness_gt"] > 0 and results["delta_cf"] >= 0
    # the color original itself: consistent up to the codec and interpolation
    assert _warp_error(pan) < results["warp_error_ab"]
    assert main(["evaluate-video", "--pred", str(tmp_path / "missing.mp4")]) == 1
    assert "missing.mp4: not found" in capsys.readouterr().err


def test_settings_are_checked_before_anything_runs(pan, tmp_path, tiny_model_dir, capsys):
    assert _colorize([pan], tmp_path, tiny_model_dir, "keyframes.interval=0") == 2
    assert "keyframes.interval must be >= 1, got 0" in capsys.readouterr().err
    assert _colorize([pan], tmp_path, tiny_model_dir, "--flow", "raft") == 2
    assert "flow.raft_weights is required" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_raft_flow_from_a_local_safetensors_file(tmp_path):
    from safetensors.torch import save_file
    from torchvision.models.optical_flow import raft_small

    from colordiff.video.flow import make_flow

    torch.manual_seed(0)
    weights = tmp_path / "raft_small.safetensors"
    save_file({k: v.contiguous() for k, v in raft_small(weights=None).state_dict().items()}, weights)
    gray = (np.asarray(Image.open(EXAMPLES / "kodim05.jpg").convert("L").resize((60, 44))))
    flow = make_flow("raft", str(weights), raft_iters=2)(gray, np.roll(gray, 2, axis=1))
    assert flow.shape == (2, 44, 60) and torch.isfinite(flow).all()
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="bad.safetensors: not a readable safetensors file"):
        make_flow("raft", str(tmp_path / "bad.safetensors"))


def test_png_frames_are_written_at_the_chosen_compression_and_decode_the_same(tmp_path):
    from colordiff.video.config import OutputSettings
    from colordiff.video.encode import ChunkWriter, plan_encoding
    from colordiff.video.io import ClipInfo

    rgb = _photo("kodim23.jpg")
    info = ClipInfo(tmp_path, "frames", rgb.shape[1], rgb.shape[0], Fraction(1, 25), Fraction(25), 1,
                    frame_names=["f_7.png"])
    sizes = {}
    for level in (0, 9):
        encoding = plan_encoding(info, OutputSettings(png_compression=level))
        writer = ChunkWriter(tmp_path / f"level{level}", info, encoding, 0)
        writer.write(0, rgb)
        writer.close()
        written = tmp_path / f"level{level}" / "f_7.png"
        assert np.array_equal(np.asarray(Image.open(written)), rgb)  # lossless at any level
        sizes[level] = written.stat().st_size
    assert sizes[0] > 1.5 * sizes[9]  # level 0 stores, level 9 compresses: the setting reaches the encoder


def test_video_costs_script_splits_a_run_into_its_stages(tmp_path, tiny_model_dir, capsys):
    import importlib.util

    script = Path(__file__).parents[1] / "scripts" / "video_costs.py"
    spec = importlib.util.spec_from_file_location("video_costs", script)
    video_costs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(video_costs)
    folder = tmp_path / "frames"
    folder.mkdir()
    for k, frame in enumerate(camera_frames(_photo("kodim23.jpg"), (64, 48), 5, "pan")):
        Image.fromarray(frame).save(folder / f"f_{k}.png")
    result = video_costs.main([str(folder), "--model", str(tiny_model_dir), "--resolution", "32", "--steps", "1",
                               "--count", "4"])
    per_frame, flow = result["none"]["stages_ms"], result["flow"]["stages_ms"]
    assert result["none"]["frames"] == result["flow"]["frames"] == 4
    assert per_frame["flow"] == 0 and flow["flow"] > 0  # only flow mode computes optical flow
    assert per_frame["merge, flow frames"] == 0 and flow["merge, flow frames"] > 0
    assert per_frame["merge inside model calls"] > 0  # per-frame outputs are merged by the pipeline itself
    for stages in (per_frame, flow):
        assert stages["read frame"] > 0 and stages["analyse (L, grid)"] > 0 and stages["write frame"] > 0
        assert stages["model calls"] > stages["merge inside model calls"]
    assert '"flow"' in capsys.readouterr().out.splitlines()[-1]  # the last line is the JSON
