"""Video on real footage: a few frames of a real handheld clip (gray input, color truth), frame-folder inputs and
the occlusion mask of the flow propagation."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from colordiff.cli import main
from colordiff.images import gray_pil
from colordiff.video.config import EvalVideoConfig
from colordiff.video.evaluate import evaluate_video
from colordiff.video.flow import make_flow, occlusion_mask

pytestmark = pytest.mark.usefixtures("one_thread")
CLIP = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "video" / "sam2-bedroom"
if not CLIP.is_dir():
    CLIP = Path("/work/shared/data/video/sam2-bedroom")
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "photos"
SIZE = (160, 90)  # the clip's 960 x 540 shrunk six times


@pytest.fixture(scope="module")
def gray_reel(tmp_path_factory) -> Path:
    """Six consecutive frames where the children move fast (183-188), gray, 160 x 90, as a frames folder."""
    folder = tmp_path_factory.mktemp("real") / "bedroom"
    folder.mkdir()
    for k in range(6):
        with Image.open(CLIP / f"{183 + k:05d}.jpg") as image:
            small = np.asarray(image.convert("RGB").resize(SIZE, Image.Resampling.BOX))  # (90, 160, 3)
        gray_pil(small).save(folder / f"{k:05d}.png")
    return folder


def _colorize(folder: Path, out: Path, model: Path, temporal: str) -> Path:
    assert main(["colorize-video", str(folder), "-o", str(out), "--model", str(model), "--steps", "2",
                 "--resolution", "64", "--temporal", temporal, "output.frame_rate=24"]) == 0
    return out / folder.name


def test_flow_flickers_less_than_per_frame_on_real_frames_and_folders_round_trip(gray_reel, tmp_path,
                                                                                tiny_model_dir):
    errors = {}
    for temporal in ("none", "flow"):
        out = _colorize(gray_reel, tmp_path / temporal, tiny_model_dir, temporal)
        frames = sorted(out.iterdir())
        assert [p.name for p in frames] == sorted(p.name for p in gray_reel.iterdir())  # the frame count kept
        for frame in frames:
            with Image.open(frame) as image:
                assert image.size == SIZE
        results = evaluate_video(EvalVideoConfig(pred=str(out), fps=24))
        assert results["n_frames"] == 6 and results["n_pairs"] == 5
        errors[temporal] = results["warp_error_ab"]
    assert errors["flow"] < 0.5 * errors["none"], errors


def test_a_frames_folder_without_fps_is_one_line_naming_it(gray_reel, capsys):
    assert main(["evaluate-video", "--pred", str(gray_reel)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"colordiff: {gray_reel}: a frames folder has no frame rate of its own: give it with fps=N "
                   "(e.g. fps=24)"]
    assert main(["evaluate-video", "--pred", str(gray_reel), "--fps", "24"]) == 0


def _textured(name: str, size: tuple[int, int]) -> np.ndarray:
    with Image.open(EXAMPLES / name) as image:
        return np.asarray(image.convert("L").resize(size, Image.Resampling.BOX))  # (h, w) uint8


def test_the_occlusion_mask_marks_uncovered_background_and_not_static_background():
    """A textured square slides 12 px right over a static photo: the background it uncovers in the second frame
    was not in the first (occluded), the background far from it is seen in both (not occluded)."""
    background, square = _textured("kodim05.jpg", (128, 96)), _textured("kodim23.jpg", (32, 32))
    first, second = background.copy(), background.copy()
    first[32:64, 40:72] = square
    second[32:64, 52:84] = square
    mask = occlusion_mask(make_flow("dis"), first, second, alpha=0.01, beta=0.5, reliable=0.5)[0]  # (96, 128)
    uncovered = mask[36:60, 42:50]  # inside the strip x in [40, 52) the square left, away from its edges
    static = mask[:, 100:]  # 16+ px right of the square in both frames; rows above and below are checked too
    assert float(uncovered.mean()) > 0.5
    assert float(static.mean()) < 0.05
    assert float(mask[:20].mean()) < 0.05 and float(mask[76:].mean()) < 0.05
