"""`colordiff colorize --captions FILE`: per-image captions from a JSONL file (scripts/caption.py's format) take the
place of the captioner, for ColorDiff (into the prompt template) and SeAda (into the semantic adapter)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from colordiff import caption_cache
from colordiff.cli import main
from colordiff.semantics import PRIORS_FILE
from colordiff.semantics.testing import save_tiny_prior_generators

FAST = ["--steps", "2", "--resolution", "64"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def photos(tmp_path) -> Path:
    """Three small images with structure (noise, a gradient, stripes), one in a subfolder."""
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    y, x = np.mgrid[0:40, 0:56] / 40.0
    images = {"a.png": np.random.default_rng(0).random((40, 56, 3)),
              "sub/b.png": np.stack([x, y, x * y], -1).clip(0, 1),
              "c.png": (np.sin(x * 20) * 0.5 + 0.5)[..., None].repeat(3, -1)}
    for name, rgb in images.items():
        Image.fromarray((rgb * 255).astype(np.uint8)).save(root / name)
    return root


def _write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.int16)


def _sidecar(path: Path) -> dict:
    return json.loads(path.read_text())


def test_captions_file_sets_the_prompt_like_the_same_prompt(photos, tmp_path, tiny_model_dir):
    """ColorDiff, no category recorded: the composed prompt is the caption, and the output equals --prompt's."""
    captions = _write_jsonl(tmp_path / "captions.jsonl", [
        {"path": "a.png", "caption": "a red barn in the snow"},  # the hand-written alias
        {"path": "./sub/b.png", "caption_gray": "a green meadow", "caption_color": "ignored", "captioner": "x:y"},
        {"path": str((photos / "c.png").resolve()), "caption_gray": "a blue lake"},  # matched by absolute path
        {"path": "not/an/input.png", "caption": "unused lines are fine"},
    ])
    out = tmp_path / "out"
    model = ["--model", str(tiny_model_dir), *FAST, "--batch-size", "1"]  # batched matmuls round differently
    assert main(["colorize", str(photos), "-o", str(out), *model, "--captions", str(captions), "--save-priors"]) == 0
    expected = {"a.png": "a red barn in the snow", "sub/b.png": "a green meadow", "c.png": "a blue lake"}
    for name, caption in expected.items():
        data = _sidecar(out / Path(name).with_suffix(".priors.json"))
        assert data["caption"] == caption and data["prompt"] == caption and data["category"] is None
        assert data["caption_source"] == captions.resolve().as_posix() and data["source"] == name

    prompted, plain = tmp_path / "prompted", tmp_path / "plain"
    assert main(["colorize", str(photos / "a.png"), "-o", str(prompted), *model, "--prompt",
                 "a red barn in the snow"]) == 0
    np.testing.assert_array_equal(_pixels(out / "a.png"), _pixels(prompted / "a.png"))
    assert main(["colorize", str(photos / "a.png"), "-o", str(plain), *model]) == 0
    assert np.abs(_pixels(out / "a.png") - _pixels(plain / "a.png")).max() > 2  # the caption did change the result


def test_caption_key_reads_the_color_caption(photos, tmp_path, tiny_model_dir):
    """--caption-key caption_color: each line's Des_c becomes the caption (a model trained on Des_c), not Des_g."""
    captions = _write_jsonl(tmp_path / "captions.jsonl", [
        {"path": "a.png", "caption_gray": "a barn in the snow", "caption_color": "a red barn in the white snow"}])
    out = tmp_path / "out"
    assert main(["colorize", str(photos / "a.png"), "-o", str(out), "--model", str(tiny_model_dir), *FAST,
                 "--captions", str(captions), "--caption-key", "caption_color", "--save-priors"]) == 0
    data = _sidecar(out / "a.priors.json")
    assert data["caption"] == data["prompt"] == "a red barn in the white snow"


@pytest.fixture(scope="module")
def generators(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("generators")
    save_tiny_prior_generators(root)  # priors/{blip,efficientnet,mask2former} + semantic_priors.yaml
    return root


def _model_with_generators(tiny_model_dir: Path, generators: Path, target: Path) -> Path:
    shutil.copytree(tiny_model_dir, target)
    shutil.copytree(generators / "priors", target / "priors")
    shutil.copy(generators / PRIORS_FILE, target / PRIORS_FILE)
    return target


def test_caption_script_output_replaces_the_captioner_which_is_not_loaded(photos, tmp_path, tiny_model_dir,
                                                                           generators, capsys):
    """scripts/caption.py's file over the same folder works as is; with it the recorded captioner is never loaded
    (its folder is gone), category and segmentation are still computed, and the result equals the captioner's run."""
    model = _model_with_generators(tiny_model_dir, generators, tmp_path / "model")
    captions = tmp_path / "captions.jsonl"
    spec = "captioner.max_new_tokens=8 captioner.num_beams=2 captioner.batch_size=16".split()  # as the model records
    assert caption_cache.main([f"data_dir={photos}", f"output={captions}",
                             f"captioner.source={model / 'priors' / 'blip'}", *spec, "device=cpu"]) == 0
    records = {r["path"]: r for r in map(json.loads, captions.read_text().splitlines())}
    assert sorted(records) == ["a.png", "c.png", "sub/b.png"]

    run = ["colorize", str(photos), "--model", str(model), "--save-priors", *FAST]
    assert main([*run, "-o", str(tmp_path / "captioned")]) == 0  # the captioner runs in colorize itself
    shutil.rmtree(model / "priors" / "blip")
    capsys.readouterr()
    assert main([*run, "-o", str(tmp_path / "gone")]) == 2  # without the file the captioner is needed, and gone
    assert "cannot load captioner 'blip'" in capsys.readouterr().err
    assert main([*run, "-o", str(tmp_path / "from_file"), "--captions", str(captions)]) == 0

    for name, record in records.items():
        ours = _sidecar(tmp_path / "from_file" / Path(name).with_suffix(".priors.json"))
        theirs = _sidecar(tmp_path / "captioned" / Path(name).with_suffix(".priors.json"))
        assert ours["caption"] == record["caption_gray"] == theirs["caption"]
        assert ours["category"] == theirs["category"] and ours["category"]  # the classifier still ran
        assert ours["prompt"] == f"{ours['category']}, {record['caption_gray']}" == theirs["prompt"]
        assert ours["instances"] == theirs["instances"] and len(ours["instances"]) > 0  # so did the segmenter
        assert ours["caption_source"] == captions.resolve().as_posix() and "caption_source" not in theirs
        np.testing.assert_array_equal(_pixels(tmp_path / "from_file" / name), _pixels(tmp_path / "captioned" / name))


def test_input_without_caption_is_reported_and_the_rest_is_written(photos, tmp_path, tiny_model_dir, capsys):
    captions = _write_jsonl(tmp_path / "captions.jsonl", [{"path": "a.png", "caption": "a cat"},
                                                          {"path": "sub/b.png", "caption": "a dog"}])
    out = tmp_path / "out"
    args = ["colorize", str(photos), "-o", str(out), "--model", str(tiny_model_dir), *FAST, "--captions", str(captions)]
    assert main(args) == 1
    err = capsys.readouterr().err
    reported = [line for line in err.splitlines() if "c.png" in line]
    assert reported == [f"colordiff: {photos / 'c.png'}: no caption in {captions} (no line with \"path\" c.png or "
                        f"{(photos / 'c.png').absolute().as_posix()})"]
    assert "colordiff: 2 colorized, 0 skipped (already done), 1 failed" in err
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == ["a.png", "sub/b.png"]

    _write_jsonl(captions, [{"path": "a.png", "caption": "a cat"}, {"path": "sub/b.png", "caption": "a dog"},
                            {"path": "c.png", "caption": "a bird"}])
    assert main(args) == 0  # resumes: the other two are done
    assert "1 colorized, 2 skipped (already done), 0 failed" in capsys.readouterr().err


GOOD = json.dumps({"path": "a.png", "caption": "a cat"})


@pytest.mark.parametrize("lines, extra, message", [
    ([GOOD, '{"path": "b.png", "caption": "a dog"'], [], "captions.jsonl:2: not valid JSON"),
    ([GOOD, "", '{"caption": "a dog"}'], [], 'captions.jsonl:3: no "path" string'),
    ([GOOD, '{"path": "b.png", "caption_color": "a red dog"}'], [], 'captions.jsonl:2: no "caption_gray" (or '),
    (['{"path": "b.png", "caption_gray": null}'], [], 'captions.jsonl:1: "caption_gray" must be a string, got null'),
    (['["b.png", "a dog"]'], [], "captions.jsonl:1: expected a JSON object, got list"),
    ([GOOD, '{"path": "./a.png", "caption": "a dog"}'], [], "captions.jsonl:2: a different caption for a.png than "
                                                            "on line 1"),
    ([GOOD], ["--caption-key", "caption_color"], 'captions.jsonl:1: no "caption_color" for a.png'),
    ([], [], "holds no captions"),
    ([GOOD], ["--prompt", "a cat"], "--prompt and --captions both give the text"),
    ([GOOD], ["--priors", "none"], "--captions gives the caption prior, but priors='none' leaves it out"),
    ([GOOD], ["priors=category,segmentation"], "priors='category,segmentation' leaves it out"),
])
def test_bad_captions_file_or_flags_are_usage_errors_before_any_work(lines, extra, message, photos, tmp_path, capsys):
    captions = _write_jsonl(tmp_path / "captions.jsonl", lines)
    out = tmp_path / "out"
    # the model does not exist: these errors come before the model is even loaded
    assert main(["colorize", str(photos), "-o", str(out), "--model", str(tmp_path / "no_model"),
                 "--captions", str(captions), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("colordiff: error:") and message in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_missing_captions_file_is_a_usage_error(photos, tmp_path, capsys):
    assert main(["colorize", str(photos), "-o", str(tmp_path / "out"), "--model", "m", "--captions",
                 str(tmp_path / "nope.jsonl")]) == 2
    assert f"cannot read captions file {tmp_path / 'nope.jsonl'}" in capsys.readouterr().err


def test_seada_caption_reaches_the_adapter(photos, tmp_path, capsys):
    model = tmp_path / "seada"
    assert main(["init-model", str(model), "--tiny", "--method", "seada"]) == 0
    first = _write_jsonl(tmp_path / "first.jsonl", [{"path": "a.png", "caption": "a red car on a street"}])
    second = _write_jsonl(tmp_path / "second.jsonl", [{"path": "a.png", "caption": "an old grey horse"}])
    source = photos / "a.png"
    run = ["colorize", str(source), "--model", str(model), *FAST]
    assert main([*run, "-o", str(tmp_path / "first"), "--captions", str(first), "--save-priors"]) == 0
    assert main([*run, "-o", str(tmp_path / "second"), "--captions", str(second)]) == 0
    assert main([*run, "-o", str(tmp_path / "prompt"), "--prompt", "a red car on a street"]) == 0
    data = _sidecar(tmp_path / "first" / "a.priors.json")
    assert data["caption"] == data["prompt"] == "a red car on a street"
    assert data["caption_source"] == first.resolve().as_posix()
    np.testing.assert_array_equal(_pixels(tmp_path / "first" / "a.png"), _pixels(tmp_path / "prompt" / "a.png"))
    assert np.abs(_pixels(tmp_path / "first" / "a.png") - _pixels(tmp_path / "second" / "a.png")).max() > 2
