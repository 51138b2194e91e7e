"""Model cards: the README.md of every model folder colordiff writes, in the Hugging Face hub's format (a YAML header,
then Markdown): which paper and method, which components are trained, how to use it, how it was trained, and its
evaluation tables once scripts/reproduce_tables.py has scored it.

The header's `colordiff` key records the trained components, so that a card written from an earlier model folder
(a training stage, a merge) carries them, the base model and the license forward.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import yaml

from colordiff.io import atomic_write

CODE_LICENSE = "apache-2.0"  # the license of this code (LICENSE), and of weights not derived from another model
KNOWN_LICENSES = {  # hub ids whose card may be missing offline
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "creativeml-openrail-m",
    "runwayml/stable-diffusion-v1-5": "creativeml-openrail-m",
    "CompVis/stable-diffusion-v1-4": "creativeml-openrail-m",
}
METHODS = {
    "ColorDiffPipeline": ("colordiff", "ColorDiff", "paper 000, \"Multimodal Semantic-Aware Automatic Colorization "
                          "with Diffusion Prior\": Stable Diffusion with a concat U-Net (Eq.1-2) conditioned on the "
                          "gray image's latent, semantic priors in the prompt and a luminance-aware VAE decoder "
                          "(Eq.6-7)"),
    "SeAdaPipeline": ("seada", "SeAda", "paper 001, \"Unleashing the Semantic Adaptability of Controlled Diffusion "
                      "Model for Image Colorization\": frozen Stable Diffusion under a ControlNet with a conditional "
                      "mapper and RCA blocks, text from the semantic adapter (Eq.2-3)"),
}
COMPONENTS = {
    "colordiff": {"unet": "concat U-Net (Eq.1): SD's U-Net behind a 1x1 conv of concat(z_t, z_c)",
                  "vae": "luminance-aware VAE (Eq.6): SD's VAE with skips from the frozen encoder into the decoder",
                  "text_encoder": "CLIP text encoder (frozen)"},
    "seada": {"unet": "Stable Diffusion's U-Net (frozen)", "vae": "Stable Diffusion's VAE (frozen)",
              "control": "controlled T2I model: ControlNet + conditional mapper + RCA blocks",
              "adapter": "semantic adapter (Eq.2-3): trainable text encoder, embedding e_t and MLP"},
}
TRAINING_KEYS = (  # the settings a card summarises, when the config has them
    "stage", "pretrained_model_name_or_path", "train_data_dir", "train_file_list", "text_source", "caption_file",
    "resolution", "max_train_steps", "train_batch_size", "gradient_accumulation_steps", "learning_rate",
    "lr_scheduler", "lr_warmup_steps", "adam_weight_decay", "mixed_precision", "use_ema", "ema_decay",
    "prediction_type", "zero_terminal_snr", "conditioning_dropout", "perceptual_weight", "lambda_r", "lambda_s",
    "adapter_parts", "use_rca", "w_min", "w_max", "num_ddim_timesteps", "lora_rank", "lora_alpha",
    "lora_target_modules", "seed",
)
CARD = "README.md"
_HEADER = re.compile(r"\A---\n(.*?)\n---\n", re.DOTALL)
_SECTION = "<!-- colordiff:evaluation:{name} -->"
_SECTION_END = "<!-- /colordiff:evaluation:{name} -->"


def read_card(folder: str | Path) -> tuple[dict, str]:
    """(YAML header, Markdown body) of `<folder>/README.md`; ({}, "") when there is none or it has no header."""
    path = Path(folder) / CARD
    if not path.is_file():
        return {}, ""
    text = path.read_text(encoding="utf-8")
    match = _HEADER.match(text)
    if not match:
        return {}, text
    try:
        header = yaml.safe_load(match.group(1)) or {}
    except yaml.YAMLError:
        header = {}
    return (header if isinstance(header, dict) else {}), text[match.end():]


def base_license(base: str | None) -> str:
    """The license of weights derived from `base`: its own card's `license` (a local folder, or the hub cache),
    the known one for Stable Diffusion 1.x, `other` when unknown; the code's license without a base."""
    if not base:
        return CODE_LICENSE
    header = read_card(base)[0] if Path(base).is_dir() else _cached_card(base)
    return str(header.get("license") or KNOWN_LICENSES.get(base, "other"))


def _cached_card(repo_id: str) -> dict:
    """The YAML header of a hub model's README.md if the local cache has it (nothing is downloaded)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        path = try_to_load_from_cache(repo_id, CARD)
    except Exception:  # an id the hub library refuses: no card
        return {}
    return read_card(Path(path).parent)[0] if isinstance(path, str) else {}


def training_summary(config) -> dict:
    """The key settings of a training config (a dataclass or a mapping), in TRAINING_KEYS order."""
    values = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    return {k: values[k] for k in TRAINING_KEYS if k in values and values[k] is not None}


def write_model_card(folder: str | Path, *, base_model: str | None = None, training=None,
                     evaluation: dict[str, str] | None = None, trained: dict[str, str] | None = None,
                     previous: str | Path | None = None, lora_file: str | Path | None = None,
                     shown_as: str | Path | None = None) -> Path:
    """Write `<folder>/README.md` atomically for the model folder `folder` (its model_index.json names the method).

    base_model: the hub id or folder the weights derive from (None: random weights, or `previous`'s base).
    training: the training config (its key settings are summarised). evaluation: {set name: Markdown table}.
    trained: {component: how it was trained here}, added to `previous`'s (the model folder this one was made from,
    whose card, if any, gives the base model, license and trained components). lora_file: where the LoRA file of
    this training is. shown_as: the folder's path in the usage lines (default `folder`; a staging folder's target).
    """
    folder = Path(folder)
    method, title, paper = _method(folder)
    before = read_card(previous)[0] if previous is not None and Path(previous).is_dir() else {}
    record = before.get("colordiff")
    if isinstance(record, dict):  # made from a colordiff model folder: its base, license and trained parts
        base, license_name = record.get("base"), before.get("license") or base_license(record.get("base"))
    else:  # from a base model (Stable Diffusion) or random weights
        record, base = {}, base_model
        license_name = base_license(base)
    components = dict(record.get("trained") or {})
    for name, how in (trained or {}).items():  # a part trained again: its history, oldest first
        components[name] = f"{components[name]}; then {how}" if components.get(name) else how
    lora = training is not None and training_summary(training).get("lora_rank")
    header = {"library_name": "diffusers", "pipeline_tag": "image-to-image",
              "tags": ["colorization", method] + (["lora"] if lora else []), "license": license_name}
    if base and _is_hub_id(base):
        header["base_model"] = base
    header["colordiff"] = {"method": method, "base": base, "trained": components}
    body = [f"# {title} colorization model", "", f"A {title} model ({paper}), written by colordiff.", "",
            *_components_section(method, components), *_usage_section(Path(shown_as or folder)),
            *_training_section(training, lora_file, components, previous), *_base_section(base, header["license"]),
            *(_evaluation_block(name, table) for name, table in (evaluation or {}).items())]
    return _write(folder, header, "\n".join(body).rstrip() + "\n")


def add_evaluation(folder: str | Path, table_markdown: str, *, name: str = "evaluation") -> Path:
    """Add (or replace) the evaluation section `name` of `<folder>/README.md`; a folder without a card gets one."""
    folder = Path(folder)
    if not read_card(folder)[0]:
        write_model_card(folder)
    header, body = read_card(folder)
    block = _evaluation_block(name, table_markdown)
    start, end = _SECTION.format(name=name), _SECTION_END.format(name=name)
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end) + r"\n?", re.DOTALL)
    body = pattern.sub(lambda _: block, body) if pattern.search(body) else body.rstrip() + "\n\n" + block
    return _write(folder, header, body)


def _write(folder: Path, header: dict, body: str) -> Path:
    path = folder / CARD
    text = "---\n" + yaml.safe_dump(header, sort_keys=False, allow_unicode=True) + "---\n\n" + body.lstrip("\n")
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def _method(folder: Path) -> tuple[str, str, str]:
    index = folder / "model_index.json"
    try:
        name = json.loads(index.read_text())["_class_name"]
        return (*METHODS[name][:2], METHODS[name][2])
    except (OSError, ValueError, KeyError, TypeError):
        raise ValueError(f"{index}: not a ColorDiff or SeAda model folder (model_index.json names neither "
                         "ColorDiffPipeline nor SeAdaPipeline)") from None


def _is_hub_id(name: str) -> bool:
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", name)) and not Path(name).exists()


def _components_section(method: str, trained: dict[str, str]) -> list[str]:
    lines = ["## Components", "", "| component | what it is | state |", "|---|---|---|"]
    for name, what in COMPONENTS[method].items():
        lines.append(f"| `{name}` | {what} | {trained.get(name, 'as initialised from the base model (untrained)')} |")
    return lines + [""]


def _usage_section(folder: Path) -> list[str]:
    return ["## Usage", "", "```bash", f"colordiff colorize photos/ -o colorized/ --model {folder}", "```", "",
            "```python", "from PIL import Image", "", "from colordiff.pipelines import load_pipeline", "",
            f"pipe = load_pipeline({str(folder)!r})",
            "result = pipe([Image.open(\"photo.jpg\")]).images[0]  # the input's size and exact L channel", "```", ""]


def _training_section(training, lora_file, components: dict, previous) -> list[str]:
    if training is None and components:
        return ["## Training", "", f"Assembled from `{previous}` and other trained folders (the components table says "
                "how each part was trained); their cards hold the training settings.", ""]
    if training is None:
        return ["## Training", "", "Not trained by colordiff: the components hold their initial weights.", ""]
    summary = training_summary(training)
    lines = ["## Training", "", "| setting | value |", "|---|---|"]
    lines += [f"| `{k}` | `{json.dumps(v) if not isinstance(v, str) else v}` |" for k, v in summary.items()]
    if summary.get("lora_rank"):
        lines += ["", f"Trained as a LoRA (rank {summary['lora_rank']}), fused into this folder's weights."]
        if lora_file is not None:
            lines += [f"The LoRA alone: `{lora_file}` (diffusers format; `pipe.load_lora_weights(folder)` on the "
                      "model this training started from)."]
    return lines + [""]


def _base_section(base: str | None, license_name: str) -> list[str]:
    origin = f"Derived from `{base}`." if base else "Random weights (a tiny test model): no base model."
    return ["## License", "", f"{origin} Weights: `{license_name}`"
            + (" (the base model's license)" if base else "") + f"; the colordiff code: `{CODE_LICENSE}`.", ""]


def _evaluation_block(name: str, table: str) -> str:
    return (f"{_SECTION.format(name=name)}\n## Evaluation: {name}\n\n{table.strip()}\n"
            f"{_SECTION_END.format(name=name)}\n")
