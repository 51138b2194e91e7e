"""The color-rule world: generated scenes whose colors follow fixed rules, small enough that the recipes must learn
them in minutes on a CPU, with every answer known (a/b of every pixel, the instance masks, the captions).

Each shape and each ground texture has its own hue (SHAPE_HUES, GROUND_HUES); lightness is drawn at random over
overlapping ranges, so the gray value alone does not give the hue: only recognising the shape or texture does. One
shape, the ring, is purple or orange at random (one color for all the rings of a scene) and only the color caption
says which. Every object stands out from what it covers by at least MIN_CONTRAST in L. A scene is drawn from one
seeded numpy generator (`make_scene(rng, size)`), so any count of scenes is reproducible; training and held-out sets
come from different seeds.

Written per scene (write_world): `<name>.png` (sRGB) in the image folder; in a separate folder (so that image
listings never see them) `<name>` again as the instance-id map (0 ground, 1 sky, 2.. the objects, drawn in order so
later objects cover earlier ones) and one line of `world.jsonl` with the captions
(caption_color = Des_c, caption_gray = Des_g, the format of scripts/caption.py) and the instances
({"id", "label", "color"}).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from colordiff.color import lab_to_rgb
from colordiff.io import atomic_write, write_image

# Lab hue angle (degrees) and chroma per shape / ground texture: one hue per class, six 60-degree sectors covered
SHAPE_HUES = {"disk": ("red", 35.0, 55.0), "square": ("blue", 290.0, 45.0), "triangle": ("yellow", 95.0, 55.0),
              "star": ("green", 140.0, 45.0)}
RING_HUES = {"purple": (320.0, 45.0), "orange": (65.0, 50.0)}  # the ambiguous shape: its color only the caption says
GROUND_HUES = {"dotted": ("teal", 200.0, 30.0), "striped": ("brown", 65.0, 25.0)}
SKY_HUE = ("blue", 255.0, 25.0)
SHAPES = [*SHAPE_HUES, "ring"]
LIGHTNESS = (38.0, 82.0)  # objects' lightness range: every class spans it, so L alone tells nothing
# an object's lightness differs by at least this from each region it covers (ground, sky, earlier objects): a shape
# that matches its surround in L is invisible in the gray input, and no colorizer can recognise it (without this
# rule 18 % of the objects differed by < 4 L units from their surround)
MIN_CONTRAST = 12.0


@dataclass
class Scene:
    rgb: np.ndarray  # (H, W, 3) uint8
    instances: np.ndarray  # (H, W) uint8: 0 ground, 1 sky, 2 + k the k-th object
    labels: list[str]  # per instance id: "ground", "sky", then the objects' shape names
    colors: list[str]  # per instance id: the color word of each
    caption_color: str  # Des_c
    caption_gray: str  # Des_g


def _lab_of(hue: float, chroma: float, lightness: np.ndarray) -> np.ndarray:
    """(H, W, 3) Lab with one hue and chroma over a lightness field (H, W)."""
    a, b = chroma * math.cos(math.radians(hue)), chroma * math.sin(math.radians(hue))
    return np.stack([lightness, np.full_like(lightness, a), np.full_like(lightness, b)], -1)


def _ground(rng: np.random.Generator, size: int, kind: str) -> np.ndarray:
    """The ground's lightness (size, size): dots on a flat field, or stripes at a random angle."""
    base = rng.uniform(40, 75)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    if kind == "dotted":
        period = rng.uniform(5, 8)
        dots = (np.hypot((x % period) - period / 2, (y % period) - period / 2) < period / 4.5)
        return base + np.where(dots, rng.choice([-18.0, 18.0]), 0.0)
    angle = rng.uniform(0, math.pi)
    phase = x * math.cos(angle) + y * math.sin(angle)
    return base + np.where((phase / rng.uniform(5, 9)) % 1 < 0.5, -10.0, 10.0)


def _shape_polygon(rng: np.random.Generator, shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    turn = rng.uniform(0, 2 * math.pi)
    if shape == "square":
        corners = [turn + k * math.pi / 2 for k in range(4)]
        return [(cx + r * math.cos(t), cy + r * math.sin(t)) for t in corners]
    if shape == "triangle":
        return [(cx + r * math.cos(turn + k * 2 * math.pi / 3), cy + r * math.sin(turn + k * 2 * math.pi / 3))
                for k in range(3)]
    points = []  # star: five points, inner radius 0.55 r (wide enough for a 4x-downsampling VAE)
    for k in range(10):
        radius = r if k % 2 == 0 else 0.55 * r
        points.append((cx + radius * math.cos(turn + k * math.pi / 5), cy + radius * math.sin(turn + k * math.pi / 5)))
    return points


def _draw(mask: ImageDraw.ImageDraw, rng: np.random.Generator, shape: str, index: int, size: int) -> None:
    r = rng.uniform(0.13, 0.22) * size
    cx, cy = rng.uniform(r * 0.6, size - r * 0.6), rng.uniform(size * 0.25, size - r * 0.6)
    if shape == "disk":
        mask.ellipse([cx - r, cy - r, cx + r, cy + r], fill=index)
    elif shape == "ring":
        mask.ellipse([cx - r, cy - r, cx + r, cy + r], fill=index)
        inner = r * 0.45
        mask.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=0)  # the ground shows through
    else:
        mask.polygon(_shape_polygon(rng, shape, cx, cy, r), fill=index)


def _contrasting_lightness(rng: np.random.Generator, covered: list[float]) -> float:
    """An object's lightness, uniform over LIGHTNESS where it differs from every covered region's by >= MIN_CONTRAST;
    where no value does (e.g. a dark ground and a light object under it), the candidate farthest from them."""
    candidates = rng.uniform(*LIGHTNESS, size=64)
    if not covered:
        return float(candidates[0])
    gap = np.abs(candidates[:, None] - np.asarray(covered)[None]).min(1)  # (64,)
    ok = np.flatnonzero(gap >= MIN_CONTRAST)
    return float(candidates[ok[0]] if len(ok) else candidates[gap.argmax()])


def make_scene(rng: np.random.Generator, size: int) -> Scene:
    """One scene: a sky band over a dotted or striped ground, 2-4 objects of random shapes, places and sizes."""
    ground = str(rng.choice(list(GROUND_HUES)))
    horizon = int(rng.uniform(0.15, 0.4) * size)
    ids = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(ids)
    draw.rectangle([0, 0, size, horizon - 1], fill=1)
    shapes = [str(s) for s in rng.choice(SHAPES, size=int(rng.integers(2, 5)))]
    before = []  # the instance map as each object found it
    for k, shape in enumerate(shapes):
        before.append(np.asarray(ids).copy())
        _draw(draw, rng, shape, 2 + k, size)
    instances = np.asarray(ids).copy()
    y = np.mgrid[0:size, 0:size][0].astype(np.float32)
    lightness = np.where(instances == 1, 62 + 25 * y / max(horizon, 1), _ground(rng, size, ground))
    word, hue, chroma = GROUND_HUES[ground]
    lab = _lab_of(hue, chroma, lightness)
    sky_word, sky_hue, sky_chroma = SKY_HUE
    lab = np.where((instances == 1)[..., None], _lab_of(sky_hue, sky_chroma, lightness), lab)
    labels, colors = ["ground", "sky"], [word, sky_word]
    levels = {}  # instance id -> the lightness it was given
    # one ring color per scene: with a purple and an orange ring, the caption could not say which ring is which
    ring_color = str(rng.choice(list(RING_HUES)))
    for k, shape in enumerate(shapes):
        if shape == "ring":
            color = ring_color
            hue, chroma = RING_HUES[color]
        else:
            color, hue, chroma = SHAPE_HUES[shape]
        visible = instances == 2 + k
        covered = [levels[i] if i >= 2 else float(lightness[visible & (before[k] == i)].mean())
                   for i in np.unique(before[k][visible]).tolist()]
        levels[2 + k] = _contrasting_lightness(rng, covered)
        shade = levels[2 + k] + rng.uniform(-6, 6) * (y - size / 2) / size  # a little shading
        lab = np.where(visible[..., None], _lab_of(hue, chroma, shade), lab)
        labels.append(shape)
        colors.append(color)
    rgb = lab_to_rgb(torch.from_numpy(lab.astype(np.float32)).permute(2, 0, 1), clip=True)  # (3, H, W)
    rgb8 = (rgb.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return Scene(rgb8, instances, labels, colors, *_captions(labels, colors, ground))


def _captions(labels: list[str], colors: list[str], ground: str) -> tuple[str, str]:
    """(Des_c, Des_g): the objects present (each shape once, the ring with its color), the ground and the sky."""
    seen, with_color, plain = set(), [], []
    for label, color in zip(labels[2:], colors[2:], strict=True):
        if (label, color) in seen:
            continue
        seen.add((label, color))
        with_color.append(f"{_article(color)} {color} {label}")
        if label not in {p.split()[-1] for p in plain}:
            plain.append(f"a {label}")
    ground_color = GROUND_HUES[ground][0]
    return (f"{_join(with_color)} on {ground_color} {ground} ground under a {SKY_HUE[0]} sky",
            f"{_join(plain)} on {ground} ground under a sky")


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def write_world(folder: str | Path, meta: str | Path, count: int, seed: int, size: int,
                prefix: str = "scene") -> list[dict]:
    """`count` scenes of seed `seed`: the images into `folder`, the instance maps and world.jsonl into `meta`;
    returns the JSONL records."""
    folder, meta = Path(folder), Path(meta)
    rng = np.random.default_rng(seed)
    records = []
    for index in range(count):
        scene = make_scene(rng, size)
        name = f"{prefix}{index:05d}.png"
        write_image(folder / name, scene.rgb.astype(np.float32) / 255)
        with atomic_write(meta / name) as tmp:
            Image.fromarray(scene.instances).save(tmp, format="PNG")
        records.append({"path": name, "caption_color": scene.caption_color, "caption_gray": scene.caption_gray,
                        "instances": [{"id": i, "label": label, "color": color} for i, (label, color)
                                      in enumerate(zip(scene.labels, scene.colors, strict=True))]})
    with atomic_write(meta / "world.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


def prepare_world(photos: str | Path, scenes: int, heldout: int, seed: int, heldout_seed: int,
                  size: int) -> tuple[list[dict], list[dict]]:
    """The miniature's folders under `photos`: train/ (+ train_meta/), the held-out scenes gt/ (+ meta/) from another
    seed with their gray inputs gray/, and captions.jsonl of both; returns the (training, held-out) records."""
    from colordiff.color import rgb_to_gray
    from colordiff.io import read_image

    photos = Path(photos)
    train = write_world(photos / "train", photos / "train_meta", scenes, seed, size)
    held = write_world(photos / "gt", photos / "meta", heldout, heldout_seed, size, prefix="heldout")
    for record in held:
        rgb = torch.from_numpy(read_image(photos / "gt" / record["path"]).rgb).permute(2, 0, 1)  # (3, H, W)
        write_image(photos / "gray" / record["path"], rgb_to_gray(rgb).permute(1, 2, 0).numpy())
    with atomic_write(photos / "captions.jsonl") as tmp:
        tmp.write_text("".join(json.dumps({k: r[k] for k in ("path", "caption_color", "caption_gray")}) + "\n"
                               for r in train + held))
    return train, held


def read_world(meta: str | Path) -> dict[str, dict]:
    """world.jsonl of a meta folder written by write_world: {file name: record}."""
    lines = (Path(meta) / "world.jsonl").read_text().splitlines()
    return {r["path"]: r for r in map(json.loads, filter(None, lines))}


def read_instances(meta: str | Path, name: str) -> np.ndarray:
    """The instance-id map (H, W) uint8 of scene `name`."""
    return np.asarray(Image.open(Path(meta) / name))


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"
