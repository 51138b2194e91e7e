"""What the prior generators produce for one image (paper 000, Sec. 3.3), its prompt, and its JSON form.

Category and caption become the text condition c_t (through CLIP, 000 Eq.3); each instance's label L^i is its own
prompt and its mask M^i drives segmentation guidance (000 Eq.4-5). Masks travel as boolean (K, H, W) tensors at the
image's size and are stored in JSON as row-major run lengths, so a `colordiff colorize --save-priors` sidecar can be
read back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import torch

PRIOR_KINDS = ("caption", "category", "segmentation")  # what users select; each comes from one generator kind


@dataclass
class Instances:
    """Instance segmentation of one image: K binary masks with their labels and scores, best score first."""

    masks: torch.Tensor  # (K, H, W) bool, at the image's size
    labels: list[str]
    scores: list[float]

    def __post_init__(self):
        if self.masks.ndim != 3 or len(self.labels) != self.masks.shape[0] or len(self.scores) != len(self.labels):
            raise ValueError(f"instances need (K, H, W) masks with K labels and K scores, got masks "
                             f"{tuple(self.masks.shape)}, {len(self.labels)} labels, {len(self.scores)} scores")
        self.masks = self.masks.bool()

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def empty(cls, height: int, width: int) -> Instances:
        return cls(torch.zeros(0, height, width, dtype=torch.bool), [], [])


@dataclass
class ImagePriors:
    """The semantic priors of one image; None where that prior was not computed."""

    caption: str | None = None
    category: str | None = None
    instances: Instances | None = None
    extra: dict = field(default_factory=dict)  # anything else a sidecar carries (prompt used, strength, ...)

    def to_dict(self) -> dict:
        """JSON-ready: masks as run lengths, scores rounded to 4 decimals."""
        out = {"caption": self.caption, "category": self.category, **self.extra}
        if self.instances is not None:
            out["instances"] = [
                {"label": label, "score": round(float(score), 4), "area": round(float(mask.float().mean()), 6),
                 "mask": encode_mask(mask)}
                for mask, label, score in zip(self.instances.masks, self.instances.labels, self.instances.scores,
                                              strict=True)
            ]
        return out

    @classmethod
    def from_dict(cls, data: dict) -> ImagePriors:
        """Inverse of to_dict (e.g. a `--save-priors` sidecar): reuse the priors of an earlier run."""
        data = dict(data)
        caption, category, entries = data.pop("caption", None), data.pop("category", None), data.pop("instances", None)
        instances = None
        if entries is not None:
            if not entries:
                raise ValueError("an empty instance list cannot give the image size; leave 'instances' out instead")
            masks = torch.stack([torch.from_numpy(decode_mask(e["mask"])) for e in entries])  # (K, H, W)
            instances = Instances(masks, [str(e["label"]) for e in entries], [float(e["score"]) for e in entries])
        return cls(caption=caption, category=category, instances=instances, extra=data)


def compose_prompt(template: str, category: str | None = None, caption: str | None = None,
                   drop_phrases: list[str] | tuple[str, ...] = ()) -> str:
    """The text condition from the category and the caption, e.g. "{category}, {caption}" -> "goldfish, a fish ...".

    A missing part is left out together with the separator next to it. `drop_phrases` are removed from the caption
    (case-insensitive, whole words), e.g. "black and white photo of" that captioners say of every grayscale input.
    """
    if caption:
        for phrase in drop_phrases:
            caption = re.sub(rf"\b{re.escape(phrase)}\b", " ", caption, flags=re.IGNORECASE)
    try:
        text = template.format(category=(category or "").strip(), caption=(caption or "").strip())
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(f"prompt template {template!r}: only {{category}} and {{caption}} may appear "
                         f"({type(err).__name__}: {err})") from None
    return _tidy(text)


def _tidy(text: str) -> str:
    """Collapse the spaces and separators that missing or dropped parts leave behind."""
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s+([,;.:])", r"\1", text)  # "dog , cat" -> "dog, cat"
    text = re.sub(r"([,;:])(\s*[,;:])+", r"\1", text)  # ", ," -> ","
    return text.strip(" ,;:")


# -- masks as run lengths ---------------------------------------------------------------------------------------
def encode_mask(mask: torch.Tensor | np.ndarray) -> dict:
    """Binary (H, W) -> {"size": [H, W], "counts": [...]}: alternating run lengths, row-major, starting with zeros."""
    flat = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask, dtype=bool).ravel()
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], change, [flat.size]]))
    if flat.size and flat[0]:
        runs = np.concatenate([[0], runs])  # the first run counts zeros, even when there are none
    return {"size": list(np.shape(mask)), "counts": runs.astype(int).tolist()}


def decode_mask(rle: dict) -> np.ndarray:
    """Inverse of encode_mask: a bool (H, W) array; a wrong total is an error, not a silent reshape."""
    height, width = (int(v) for v in rle["size"])
    counts = np.asarray(rle["counts"], dtype=np.int64)
    if counts.sum() != height * width or (counts < 0).any():
        raise ValueError(f"mask run lengths sum to {counts.sum()}, expected {height} x {width}")
    values = np.arange(len(counts)) % 2 == 1  # zeros, ones, zeros, ...
    return np.repeat(values, counts).reshape(height, width)
