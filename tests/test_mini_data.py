"""The miniature's data: photo names, the held-out rule, the folder captions and the lab's data checks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from colordiff.config import ConfigError
from colordiff.data import load_captions
from colordiff.mini.captions import category_caption, folder_captions, remove_color_words
from colordiff.mini.lab import LabConfig, check_config
from colordiff.mini.photos import heldout_by_rule, list_photos, photo_files, photo_names

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "colorization"
if not SHARED.is_dir():
    SHARED = Path("/work/shared/data/colorization")


def color_image(path: Path, seed: int = 0, gray: bool = False) -> Path:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).convert("L" if gray else "RGB").convert("RGB").save(path)
    return path


def make_tree(root: Path) -> None:
    """A colorization-shaped tree: ImageNet names, scene folders, COCO with captions, BSDS splits (a name clash)."""
    for i, name in enumerate(["n01443537_goldfish", "n01440764_tench", "n02690373_airliner"]):
        color_image(root / "imagenet-sample" / f"{name}.jpg", i)
    for i, (scene, stem) in enumerate([("forest", "2092"), ("sea", "7"), ("buildings", "11"), ("forest", "5")]):
        color_image(root / "scenes" / scene / f"{stem}.jpg", 10 + i)
    color_image(root / "coco" / "000000000139.jpg", 20)
    color_image(root / "coco" / "000000000802.jpg", 21)
    (root / "coco" / "captions.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"path": "000000000139.jpg", "captions": ["A red bus parked on a street.", "A bus on a street."]},
        {"path": "000000000802.jpg", "captions": ["A kitchen with an oven.", "An orange cat on a white bed."]}]))
    color_image(root / "bsds500" / "train" / "2092.jpg", 30)
    color_image(root / "bsds500" / "val" / "3096.jpg", 31)


def test_color_words_removed_grammatically():
    assert remove_color_words("a red bus") == "a bus"
    assert remove_color_words("An orange cat on a red and white bed.") == "A cat on a bed."
    assert remove_color_words("A black-and-white photo of a light blue car") == "A photo of a car"
    assert remove_color_words("a red, white and blue flag over green grass") == "a flag over grass"
    assert remove_color_words("Two people with brightly colored umbrellas") == "Two people with umbrellas"
    assert remove_color_words("A man dressed in white.") == "A man dressed."
    assert remove_color_words("a redwood tree and a bowl of oranges") == "a redwood tree and a bowl of oranges"


def test_category_captions():
    assert category_caption("great_white_shark") == "a photo of a great white shark"
    assert category_caption("airliner") == "a photo of an airliner"
    assert category_caption("forest") == "a photo of a forest"
    assert category_caption("sea") == "a photo of the sea"
    assert category_caption("buildings") == "a photo of buildings"


def test_folder_captions_per_source(tmp_path):
    make_tree(tmp_path)
    records = {r["path"]: r for r in folder_captions(tmp_path)}
    assert len(records) == 11  # one line per photo
    assert records["n01443537_goldfish.png"]["caption_color"] == "a photo of a goldfish"
    assert records["n01443537_goldfish.png"]["caption_gray"] == "a photo of a goldfish"
    assert records["scenes_forest_2092.png"]["caption_gray"] == "a photo of a forest"  # named apart from BSDS's 2092
    assert records["7.png"]["caption_color"] == "a photo of the sea"
    bus = records["000000000139.png"]  # the first caption that names a color
    assert (bus["caption_color"], bus["caption_gray"]) == ("A red bus parked on a street.", "A bus parked on a street.")
    cat = records["000000000802.png"]  # the first names none: the first naming a color is chosen
    assert (cat["caption_color"], cat["caption_gray"]) == ("An orange cat on a white bed.", "A cat on a bed.")
    assert records["bsds500_train_2092.png"]["caption_gray"] == records["3096.png"]["caption_color"] == ""
    out = tmp_path / "captions.jsonl"
    subprocess.run([sys.executable, str(REPO / "scripts" / "folder_captions.py"), str(tmp_path), str(out)],
                   check=True, capture_output=True)
    assert load_captions(out, "caption_gray")["000000000139.png"] == "A bus parked on a street."  # what training reads
    assert out.read_text() == "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in folder_captions(tmp_path))


def test_photo_names_are_stems_unless_shared(tmp_path):
    make_tree(tmp_path)
    files = sorted(tmp_path.rglob("*.jpg"))
    names = photo_names(tmp_path, files)
    assert len(set(names.values())) == len(files)
    assert names[tmp_path / "scenes" / "sea" / "7.jpg"] == "7"
    assert names[tmp_path / "bsds500" / "train" / "2092.jpg"] == "bsds500_train_2092"


def test_a_black_and_white_photo_sharing_a_stem_names_both_by_path(tmp_path):
    color = color_image(tmp_path / "a" / "x.jpg", 1)
    color_image(tmp_path / "b" / "x.jpg", 2, gray=True)  # screened out of training, yet it still names the other
    names = photo_names(tmp_path, photo_files(tmp_path))
    assert names[color] == "a_x"
    train, held = list_photos(tmp_path, ["a_x"])  # the held-out list uses the names the lab writes
    assert held == [color] and train == []
    with pytest.raises(FileNotFoundError, match="held-out photos not found: x"):
        list_photos(tmp_path, ["x"])


def test_heldout_rule_is_every_kth_sorted_name_per_source(tmp_path):
    files = [color_image(tmp_path / src / f"{i:03d}.jpg", i) for src in ("a", "b") for i in range(10)]
    files += [color_image(tmp_path / "c" / f"{i:03d}.jpg", i) for i in range(2)]
    picked = heldout_by_rule(tmp_path, list(reversed(files)), every=4)
    assert [p.relative_to(tmp_path).as_posix() for p in picked] == ["a/003.jpg", "a/007.jpg", "b/003.jpg",
                                                                    "b/007.jpg"]  # c has too few: none
    assert heldout_by_rule(tmp_path, files, every=4) == picked  # order of the input does not matter
    assert len(heldout_by_rule(tmp_path, files, every=1)) == len(files)
    with pytest.raises(ValueError):
        heldout_by_rule(tmp_path, files, every=0)


def test_list_photos_holds_out_by_rule_among_color_photos(tmp_path):
    for i in range(6):
        color_image(tmp_path / "a" / f"{i}.jpg", i)
    color_image(tmp_path / "a" / "1b.jpg", 9, gray=True)  # black-and-white: never trained on, never held out
    train, held = list_photos(tmp_path, ["5"], heldout_every=2)
    assert [p.name for p in held] == ["1.jpg", "3.jpg", "5.jpg"]  # a/0 a/1 a/2 a/3 a/4 (sorted, 5 named) -> 1, 3
    assert [p.name for p in train] == ["0.jpg", "2.jpg", "4.jpg"]
    assert list_photos(tmp_path, ["5"], heldout_every=2) == (train, held)  # deterministic


@pytest.mark.skipif(not SHARED.is_dir(), reason="the shared colorization photos are not here")
def test_heldout_rule_on_the_real_tree_gives_about_100_photos():
    files = sorted(f for f in SHARED.rglob("*.jpg"))
    picked = heldout_by_rule(SHARED, files, every=75)
    sources = {p.relative_to(SHARED).parts[0] for p in picked}
    assert 90 <= len(picked) <= 110 and sources == {"imagenet-sample", "scenes", "coco", "bsds500"}


def test_lab_refuses_a_test_set_inside_its_training_data(tmp_path):
    (tmp_path / "data" / "kodak").mkdir(parents=True)
    with pytest.raises(ConfigError, match="overlaps"):
        check_config(LabConfig(data_dir=str(tmp_path / "data"), test_dir=str(tmp_path / "data" / "kodak")))
    check_config(LabConfig(data_dir=str(tmp_path / "data" / "kodak"), test_dir=str(tmp_path / "other")))
