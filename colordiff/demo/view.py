"""What the demo's page shows of a session, as plain values (text, images, lists); no gradio here."""

from __future__ import annotations

import numpy as np
import PIL.Image

from colordiff.demo.core import Session, Upload
from colordiff.semantics.priors import ImagePriors

NONE = "none"


def shown_priors(upload: Upload) -> ImagePriors | None:
    """The priors the panel shows: those of the current results, else the computed ones."""
    return upload.used or upload.available


def priors_summary(upload: Upload, method: str) -> str:
    """Markdown: the caption, category, prompt and instances used for `upload`'s results, or "none"."""
    used = upload.used
    if used is None and upload.available is None:
        prompt = upload.settings.prompt if upload.settings is not None else None
        note = "the model records no prior generators, or priors are off"
        return f"**Priors used:** {NONE} ({note})" + (f"  \n**Prompt:** {prompt}" if prompt else "")
    shown = used or upload.available
    instances = shown.instances
    lines = [f"**Caption:** {shown.caption or NONE}"]
    if method != "SeAda":  # SeAda conditions on the caption only
        lines.append(f"**Category:** {shown.category or NONE}")
        lines.append(f"**Instances:** {len(instances) if instances is not None else NONE}")
    lines.append(f"**Prompt:** {(used.extra.get('prompt') if used else None) or '(empty)'}")
    return "  \n".join(lines)


def instance_labels(priors: ImagePriors | None) -> list[str]:
    """One label per instance: `1: dog (0.93)`."""
    if priors is None or priors.instances is None:
        return []
    inst = priors.instances
    return [f"{i + 1}: {label} ({score:.2f})" for i, (label, score) in enumerate(zip(inst.labels, inst.scores,
                                                                                     strict=True))]


def instance_overlay(upload: Upload) -> tuple[PIL.Image.Image, list[tuple[np.ndarray, str]]] | None:
    """The gray input with every computed instance mask, labelled (for gr.AnnotatedImage); None without any."""
    labels = instance_labels(upload.available)
    if not labels:
        return None
    masks = upload.available.instances.masks.cpu().numpy().astype(np.float32)  # (K, H, W) in {0, 1}
    return upload.gray, list(zip(list(masks), labels, strict=True))


def instances_on(upload: Upload) -> list[int]:
    """The instance indices switched on for the current results."""
    count = len(instance_labels(upload.available))
    if upload.edits is None or upload.edits.instances_on is None:
        return list(range(count))
    return [i for i in upload.edits.instances_on if 0 <= i < count]


def result_caption(upload: Upload, sample: int) -> str:
    """The gallery caption of one result: the file and the seed that reproduce it."""
    seed = upload.settings.seed if upload.settings is not None else 0
    if len(upload.results) == 1:
        return f"{upload.name} · seed {seed}"
    return f"{upload.name} · seed {seed} · sample {sample}"


def gallery_items(session: Session) -> list[tuple[str, str]]:
    """(PNG path, caption) of every result, uploads in order, samples in order."""
    items = []
    for upload in session.uploads:
        for k, path in enumerate(p for p in upload.files if p.suffix == ".png"):
            items.append((str(path), result_caption(upload, k)))
    return items


def result_at(session: Session, position: int) -> tuple[int, int]:
    """(upload index, sample index) of gallery position `position`."""
    for index, upload in enumerate(session.uploads):
        if position < len(upload.results):
            return index, position
        position -= len(upload.results)
    raise IndexError(f"no result at gallery position {position}")


def status_text(session: Session) -> str:
    """Markdown: what was colorized, and one line per file that was not (or has a note)."""
    pictures, videos = sum(len(u.results) for u in session.uploads), session.videos
    parts = [f"{len(session.uploads)} image{'s' * (len(session.uploads) != 1)} ({pictures} result"
             f"{'s' * (pictures != 1)})"] if session.uploads else []
    if videos:
        frames = sum(v.frames for v in videos)
        parts.append(f"{len(videos)} video{'s' * (len(videos) != 1)} ({frames} frame{'s' * (frames != 1)})")
    text = f"Colorized {' and '.join(parts)}."
    if session.messages:
        text += "\n\n" + "\n".join(f"- {m}" for m in session.messages)
    return text
