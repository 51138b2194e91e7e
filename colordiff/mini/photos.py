"""The miniature's photos: a folder split into training and held-out photos, resized to one shorter side."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from colordiff.io import is_image_path, read_image


def list_photos(data_dir: str | Path, heldout: list[str], *, heldout_every: int = 0
                ) -> tuple[list[Path], list[Path]]:
    """(training files, held-out files) under data_dir, sorted. Training files are color photos only
    (color_photos): black-and-white photos in the folder are left out.

    A held-out entry names a file by its photo name (photo_names: the stem, unless two files share it); every one
    must exist (a typo would silently train on the photo meant to be held out). heldout_every k > 0 holds out, in
    addition, every k-th color photo of each source (heldout_by_rule)."""
    root = Path(data_dir)
    files = photo_files(root)
    names = photo_names(root, files)
    known = set(names.values())
    missing = [name for name in heldout if name not in known]
    if missing:
        raise FileNotFoundError(f"{root}: held-out photos not found: {', '.join(missing)}")
    keep = set(heldout)
    held = [f for f in files if names[f] in keep]
    train = color_photos([f for f in files if names[f] not in keep])
    if heldout_every:
        ruled = set(heldout_by_rule(root, train, every=heldout_every))
        held, train = sorted(set(held) | ruled), [f for f in train if f not in ruled]
    return train, held


def photo_files(data_dir: str | Path) -> list[Path]:
    """Every image file under data_dir (recursive, hidden paths skipped), sorted: color and black-and-white alike,
    the list photo_names names."""
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: photo folder not found")
    return sorted(f for f in root.rglob("*") if f.is_file() and is_image_path(f)
                  and not any(p.startswith(".") for p in f.relative_to(root).parts))


def photo_names(root: str | Path, files: list[Path]) -> dict[Path, str]:
    """{file: its name in the miniature}: the file's stem, or, where several files under root share that stem
    (scenes/forest/2092.jpg and bsds500/train/2092.jpg), its path relative to root without the suffix, the folders
    joined by "_" (scenes_forest_2092). The photos, captions and held-out lists all use these names, given
    photo_files(root) as files (so a name never depends on which photos were screened out)."""
    root = Path(root)
    counts: dict[str, int] = {}
    for f in files:
        counts[f.stem] = counts.get(f.stem, 0) + 1
    return {f: f.stem if counts[f.stem] == 1 else "_".join(f.relative_to(root).with_suffix("").parts)
            for f in files}


def source_of(root: str | Path, path: Path) -> str:
    """The source a photo comes from: the first folder under root ("." for a file directly in root)."""
    parts = path.relative_to(root).parts
    return parts[0] if len(parts) > 1 else "."


def heldout_by_rule(root: str | Path, files: list[Path], *, every: int) -> list[Path]:
    """The held-out rule: within each source (source_of), the files sorted by their path relative to root, then
    the every-th, 2·every-th, ... of them (never hand-picked; the same list on every machine). About
    len(files) / every photos, each source in proportion to its size."""
    if every < 1:
        raise ValueError(f"heldout_every must be at least 1, got {every}")
    root, by_source = Path(root), {}
    for f in files:
        by_source.setdefault(source_of(root, f), []).append(f)
    picked = []
    for source in sorted(by_source):
        ordered = sorted(by_source[source], key=lambda f: f.relative_to(root).as_posix())
        picked += ordered[every - 1 :: every]
    return sorted(picked)


def resize_shorter(rgb: torch.Tensor, size: int) -> torch.Tensor:
    """(3, H, W) -> shorter side `size`, aspect kept (antialiased bicubic, clamped to [0, 1])."""
    h, w = rgb.shape[-2:]
    scale = size / min(h, w)
    shape = (max(size, round(h * scale)), max(size, round(w * scale)))
    return F.interpolate(rgb[None], size=shape, mode="bicubic", antialias=True, align_corners=False)[0].clamp(0, 1)


def read_rgb(path: Path) -> torch.Tensor:
    return torch.from_numpy(read_image(path).rgb).permute(2, 0, 1)  # (3, H, W) in [0, 1]


def load_photo(path: Path, size: int) -> torch.Tensor:
    return resize_shorter(read_rgb(path), size)  # (3, h, w) in [0, 1]


def color_photos(files: list[Path], min_chroma: float = 3.0) -> list[Path]:
    """The files that are color photos: mean Lab chroma at least `min_chroma` (training's screening rule), so
    black-and-white photos in the folder are left out."""
    from colordiff.data import mean_chroma

    return [f for f in files if mean_chroma(read_image(f).rgb) >= min_chroma]


def random_crops(photos: list[torch.Tensor], count: int, crop: int, resize_range: list[float],
                 generator: torch.Generator, indices: list[int] | None = None) -> torch.Tensor:
    """`count` random crops (count, 3, crop, crop): a random photo (the i-th one for i in `indices` when given), its
    shorter side resized to crop x U(range), a random square, a random horizontal flip."""
    out = []
    for k in range(count):
        pick = int(torch.randint(len(photos), (1,), generator=generator))
        photo = photos[indices[k] if indices is not None else pick]
        low, high = resize_range
        factor = low + (high - low) * float(torch.rand((), generator=generator))
        image = resize_shorter(photo, round(crop * factor))
        h, w = image.shape[-2:]
        top = int(torch.randint(h - crop + 1, (1,), generator=generator))
        left = int(torch.randint(w - crop + 1, (1,), generator=generator))
        image = image[:, top : top + crop, left : left + crop]
        out.append(image.flip(-1) if float(torch.rand((), generator=generator)) < 0.5 else image)
    return torch.stack(out)
