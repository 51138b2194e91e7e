"""The color-rule world (colordiff/mini/world.py) and the hue-accuracy measure it is scored with."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from colordiff import hue
from colordiff import metrics as M
from colordiff.color import rgb_to_lab
from colordiff.mini.world import (
    GROUND_HUES,
    RING_HUES,
    SHAPE_HUES,
    SKY_HUE,
    make_scene,
    read_instances,
    read_world,
    write_world,
)
from colordiff.mini.world_report import class_accuracy, exact_priors


def _lab(rgb8: np.ndarray) -> torch.Tensor:
    return rgb_to_lab(torch.from_numpy(rgb8).permute(2, 0, 1).double() / 255)  # (3, H, W)


def _hue_gap(a: torch.Tensor, degrees: float) -> torch.Tensor:
    return (torch.rad2deg(a) - degrees + 180) % 360 - 180


def test_scenes_are_seeded_and_follow_the_color_rules():
    first, again = make_scene(np.random.default_rng(7), 64), make_scene(np.random.default_rng(7), 64)
    assert np.array_equal(first.rgb, again.rgb) and first.caption_color == again.caption_color
    assert not np.array_equal(first.rgb, make_scene(np.random.default_rng(8), 64).rgb)
    hues = {**{k: v[1] for k, v in SHAPE_HUES.items()}, **{v[0]: v[1] for v in GROUND_HUES.values()},
            "sky": SKY_HUE[1], **{c: h for c, (h, _) in RING_HUES.items()}}
    lightness = {}
    rng = np.random.default_rng(0)
    for _ in range(30):
        scene = make_scene(rng, 64)
        lab = _lab(scene.rgb)
        hue = torch.atan2(lab[2], lab[1])
        for index, (label, color) in enumerate(zip(scene.labels, scene.colors, strict=True)):
            mask = torch.from_numpy(scene.instances == index)
            if mask.sum() < 20:
                continue  # covered by later objects
            expected = hues["sky"] if label == "sky" else hues[color] if label in ("ground", "ring") else hues[label]
            # every class keeps its own hue (clipping to sRGB moves a few pixels by some degrees)
            assert _hue_gap(hue[mask], expected).abs().median() < 12, (label, color)
            if label not in ("ground", "sky"):
                lightness.setdefault(label, []).append(float(lab[0][mask].mean()))
    # lightness alone does not tell the class: every shape spans most of the range
    for label, values in lightness.items():
        assert max(values) - min(values) > 20, label


def test_every_object_stands_out_from_what_it_covers_in_the_gray_input():
    # a shape that matches its surround in L is invisible in the gray input: each object differs by >= MIN_CONTRAST
    # from the regions it covers, so few border pixels lie within 6 L units of the object (texture and gamut aside)
    from scipy import ndimage

    rng, shares = np.random.default_rng(1), []
    for _ in range(40):
        scene = make_scene(rng, 64)
        lightness = _lab(scene.rgb)[0].numpy()
        for index in range(2, len(scene.labels)):
            mask = scene.instances == index
            if mask.sum() < 20:
                continue
            border = ndimage.binary_dilation(mask) & ~mask
            shares.append(float((np.abs(lightness[border] - lightness[mask].mean()) < 6).mean()))
    shares = np.asarray(shares)
    assert len(shares) > 60
    assert shares.mean() < 0.15 and (shares > 0.5).mean() < 0.06  # drawn at random: 0.26 and 0.22


def test_captions_carry_the_ring_color_only_in_the_color_caption(tmp_path):
    records = write_world(tmp_path / "img", tmp_path / "meta", 40, 3, 48)
    rings = [r for r in records if any(i["label"] == "ring" for i in r["instances"])]
    assert rings
    for record in records:
        colors = {i["color"] for i in record["instances"]}
        assert all(c in record["caption_color"] for c in colors)
        assert not any(c in record["caption_gray"].split() for c in colors | {"purple", "orange"})
    assert {i["color"] for r in rings for i in r["instances"] if i["label"] == "ring"} == set(RING_HUES)
    # one ring color per scene, so that the caption says the color of every ring in it
    assert all(len({i["color"] for i in r["instances"] if i["label"] == "ring"}) == 1 for r in rings)
    # the written files: one instance map per image with the ids of the record, and the JSONL read back
    assert read_world(tmp_path / "meta") == {r["path"]: r for r in records}
    ids = read_instances(tmp_path / "meta", records[0]["path"])
    assert ids.shape == (48, 48) and ids.max() < len(records[0]["instances"])
    assert not list((tmp_path / "img").glob("*mask*")) and len(list((tmp_path / "img").glob("*.png"))) == 40


def test_exact_priors_hold_the_visible_objects(tmp_path):
    records = write_world(tmp_path / "img", tmp_path / "meta", 5, 0, 48)
    for record in records:
        priors = exact_priors(tmp_path / "meta", record)
        ids = read_instances(tmp_path / "meta", record["path"])
        visible = [i for i in record["instances"][2:] if (ids == i["id"]).any()]
        assert priors.caption == record["caption_color"]
        assert priors.instances.labels == [i["label"] for i in visible]
        for mask, inst in zip(priors.instances.masks, visible, strict=True):
            assert torch.equal(mask, torch.from_numpy(ids == inst["id"]))


def test_balanced_hue_accuracy_scores_truth_one_gray_zero_and_one_color_its_sectors():
    rng = np.random.default_rng(0)
    scenes = [make_scene(rng, 64) for _ in range(16)]
    gt = M.as_uint8_batch(np.stack([s.rgb for s in scenes]))
    counts = hue.hue_sector_counts(gt, gt)
    assert hue.balanced_hue_accuracy(counts.sum(0)) == 1.0
    assert (counts[:, 1].sum(0) > 0).sum() == 6  # the world covers all six hue sectors
    gray = gt.double().mean(1, keepdim=True).round().to(torch.uint8).expand(-1, 3, -1, -1)
    assert hue.balanced_hue_accuracy(hue.hue_sector_counts(gray, gt).sum(0)) == 0.0
    # one mean color everywhere (a teal): right only on the truth's pixels within 45 degrees of it
    lab = rgb_to_lab(gt.double() / 255)
    teal = lab.clone()
    teal[:, 1], teal[:, 2] = 30 * math.cos(math.radians(200)), 30 * math.sin(math.radians(200))
    from colordiff.color import lab_to_rgb

    flat = (lab_to_rgb(teal, clip=True) * 255).round().to(torch.uint8)
    counts = hue.hue_sector_counts(flat, gt).sum(0)
    per_sector = counts[0] / counts[1].clamp_min(1)
    assert per_sector[3] > 0.9 and per_sector[[0, 1, 2, 4, 5]].max() < 0.35
    assert hue.balanced_hue_accuracy(counts) == pytest.approx(float(per_sector.mean()), abs=1e-12)


def test_class_accuracy_reads_each_shape_from_the_instance_maps(tmp_path):
    records = write_world(tmp_path / "gt", tmp_path / "meta", 6, 1, 48)
    perfect = class_accuracy(tmp_path / "gt", tmp_path / "gt", tmp_path / "meta")
    assert all(v == 1.0 for v in perfect.values() if not math.isnan(v))
    # repaint the disks' pixels gray: the disk class drops to 0, the others stay perfect
    from PIL import Image

    (tmp_path / "pred").mkdir()
    for record in records:
        rgb = np.asarray(Image.open(tmp_path / "gt" / record["path"])).copy()
        ids = read_instances(tmp_path / "meta", record["path"])
        for inst in record["instances"]:
            if inst["label"] == "disk":
                rgb[ids == inst["id"]] = rgb[ids == inst["id"]].mean(-1, keepdims=True).astype(np.uint8)
        Image.fromarray(rgb).save(tmp_path / "pred" / record["path"])
    scores = class_accuracy(tmp_path / "pred", tmp_path / "gt", tmp_path / "meta")
    if not math.isnan(scores["disk"]):
        assert scores["disk"] == 0.0
    assert all(scores[c] == 1.0 for c in ("square", "triangle", "star", "sky") if not math.isnan(scores[c]))
