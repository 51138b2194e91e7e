"""Captioners: BLIP (paper 000's caption prior [20]), BLIP-2 and CoCa (paper 001's Des_g / Des_c, its Table 5).

BLIP and BLIP-2 come from transformers. CoCa comes from open_clip; its own `generate` needs transformers'
BeamSearchScorer, which transformers 5 removed, so CoCa is decoded here by a small batched beam search over the model's
next-token logits.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import PIL.Image
import torch
import torch.nn.functional as F

from colordiff.semantics.base import PriorGenerator, hub_kwargs

COCA_CONFIG = "open_clip_config.json"
COCA_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "model.safetensors")
COCA_MIN_TOKENS = 5  # as open_clip's CoCa.generate: no end-of-text before 5 tokens
OPENAI_MEAN, OPENAI_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


class _TransformersCaptioner(PriorGenerator):
    """A transformers image-to-text model with its processor, decoded with beam search (greedy at num_beams=1)."""

    kind = "captioner"
    model_class_name: ClassVar[str]

    def __init__(self, model, processor, max_new_tokens: int = 30, num_beams: int = 3, batch_size: int = 16):
        super().__init__(model, batch_size)
        self.processor, self.max_new_tokens, self.num_beams = processor, max_new_tokens, num_beams

    @classmethod
    def from_pretrained(cls, source: str, *, revision: str | None = None, local_files_only: bool = False,
                        device="cpu", dtype=torch.float32, **options):
        """Safetensors weights only (`use_safetensors=True`); no remote code."""
        import transformers

        kwargs = hub_kwargs(revision, local_files_only)
        model = getattr(transformers, cls.model_class_name).from_pretrained(source, use_safetensors=True, dtype=dtype,
                                                                           **kwargs)
        processor = transformers.AutoProcessor.from_pretrained(source, **kwargs)
        return cls(model.to(device), processor, **options)

    def _run(self, images: list[PIL.Image.Image]) -> list[str]:
        pixels = self.processor(images=images, return_tensors="pt").pixel_values.to(self.device, self.dtype)
        ids = self.model.generate(pixel_values=pixels, max_new_tokens=self.max_new_tokens, num_beams=self.num_beams,
                                  do_sample=False)
        return [text.strip() for text in self.processor.batch_decode(ids, skip_special_tokens=True)]


class BlipCaptioner(_TransformersCaptioner):
    model_class_name = "BlipForConditionalGeneration"


class Blip2Captioner(_TransformersCaptioner):
    model_class_name = "Blip2ForConditionalGeneration"


class CocaCaptioner(PriorGenerator):
    """open_clip CoCa from a folder (or hub repo) holding open_clip_config.json and safetensors weights."""

    kind = "captioner"

    def __init__(self, model, image_size: int, mean=OPENAI_MEAN, std=OPENAI_STD, max_new_tokens: int = 30,
                 num_beams: int = 3, batch_size: int = 16):
        from open_clip.tokenizer import SimpleTokenizer

        super().__init__(model, batch_size)
        self.image_size, self.max_new_tokens, self.num_beams = image_size, max_new_tokens, num_beams
        self.mean, self.std = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
        self.tokenizer = SimpleTokenizer()  # CoCa's vocabulary: the bundled CLIP BPE, no download

    @classmethod
    def from_pretrained(cls, source: str, *, revision: str | None = None, local_files_only: bool = False,
                        device="cpu", dtype=torch.float32, **options):
        from open_clip.coca_model import CoCa
        from open_clip.factory import load_checkpoint

        folder = Path(source)
        if not folder.is_dir():  # a hub repo: fetch only the config and safetensors files, never a pickle
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(source, revision=revision, local_files_only=local_files_only,
                                            allow_patterns=[COCA_CONFIG, "*.safetensors"]))
        if not (folder / COCA_CONFIG).is_file():
            raise FileNotFoundError(f"{folder / COCA_CONFIG} not found (an open_clip model folder needs it)")
        config = json.loads((folder / COCA_CONFIG).read_text())
        model_cfg, preprocess = dict(config["model_cfg"]), config.get("preprocess_cfg", {})
        if "multimodal_cfg" not in model_cfg:
            raise ValueError(f"{folder / COCA_CONFIG} describes no CoCa model (no multimodal_cfg)")
        model_cfg.pop("custom_text", None)  # open_clip's factory flag, not a CoCa argument
        model = CoCa(**model_cfg)
        load_checkpoint(model, str(_coca_weights(folder)))  # a .safetensors path: read with safetensors, strict
        size = model_cfg["vision_cfg"].get("image_size", 224)
        return cls(model.to(device=device, dtype=dtype), size if isinstance(size, int) else size[0],
                   preprocess.get("mean", OPENAI_MEAN), preprocess.get("std", OPENAI_STD), **options)

    def _pixels(self, images: list[PIL.Image.Image]) -> torch.Tensor:
        """open_clip's eval transform: shortest side to image_size (bicubic), center crop, normalize."""
        import torchvision.transforms.v2.functional as TF

        out = []
        for image in images:
            x = TF.pil_to_tensor(image).float() / 255.0  # (3, H, W)
            x = TF.resize(x, self.image_size, interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
            out.append((TF.center_crop(x, self.image_size).clamp(0, 1) - self.mean) / self.std)
        return torch.stack(out).to(self.device, self.dtype)  # (B, 3, S, S)

    def _run(self, images: list[PIL.Image.Image]) -> list[str]:
        pixels = self._pixels(images)
        latent, embs = self.model._encode_image(pixels)  # (B, D), (B, N, W)
        beams = self.num_beams
        latent, embs = latent.repeat_interleave(beams, 0), embs.repeat_interleave(beams, 0)  # one copy per beam

        def next_logits(tokens):  # (B * beams, L) -> (B * beams, V)
            return self.model(None, tokens, image_latent=latent, image_embs=embs, output_labels=False)["logits"][:, -1]

        sot, eot = self.tokenizer.sot_token_id, self.tokenizer.eot_token_id
        start = torch.full((len(images), 1), sot, dtype=torch.long, device=self.device)
        max_new = min(self.max_new_tokens, self.model.context_length - 1)
        ids = beam_search(next_logits, start, beams, max_new, eot, min_new_tokens=min(COCA_MIN_TOKENS, max_new - 1))
        return [self._decode(row, eot) for row in ids.tolist()]

    def _decode(self, ids: list[int], eot: int) -> str:
        ids = ids[: ids.index(eot)] if eot in ids else ids
        text = self.tokenizer.decode(ids).replace("<start_of_text>", "").replace("<end_of_text>", "")
        return " ".join(text.split()).replace(" .", ".").replace(" ,", ",").strip()


def _coca_weights(folder: Path) -> Path:
    for name in COCA_WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    found = sorted(folder.glob("*.safetensors"))
    if len(found) != 1:
        raise FileNotFoundError(f"{folder}: expected one .safetensors weights file, found {len(found)} "
                                "(pickle checkpoints are never read)")
    return found[0]


def beam_search(next_logits, start: torch.Tensor, num_beams: int, max_new_tokens: int, eos_id: int,
                min_new_tokens: int = 0, length_penalty: float = 1.0) -> torch.Tensor:
    """Batched beam search: the best continuation (B, n <= max_new_tokens) of each row of `start` (B, L0).

    `next_logits` maps (B * num_beams, L) tokens to next-token logits (B * num_beams, V), beams of a row adjacent.
    Beams are ranked by log-probability / length**length_penalty; a finished beam keeps its score and only extends
    with eos. Rows never interact, so a row's result does not depend on the batch. num_beams = 1 is greedy.
    """
    batch, rows = start.shape[0], torch.arange(start.shape[0], device=start.device)[:, None]
    seqs = start.repeat_interleave(num_beams, 0)  # (B * k, L0)
    scores = torch.zeros(batch, num_beams, device=start.device)
    scores[:, 1:] = -torch.inf  # all beams start identical: expand only the first
    lengths = torch.zeros(batch, num_beams, device=start.device)
    done = torch.zeros(batch, num_beams, dtype=torch.bool, device=start.device)
    for step in range(max_new_tokens):
        logp = F.log_softmax(next_logits(seqs).float(), dim=-1).view(batch, num_beams, -1)  # (B, k, V)
        if step < min_new_tokens:
            logp[..., eos_id] = -torch.inf
        finished = torch.full_like(logp[0, 0], -torch.inf)
        finished[eos_id] = 0.0
        logp = torch.where(done[..., None], finished, logp)
        total = scores[..., None] + logp  # (B, k, V)
        new_lengths = lengths + (~done).float()
        ranked = (total / new_lengths[..., None].clamp_min(1) ** length_penalty).flatten(1)  # (B, k * V)
        top = ranked.topk(num_beams, dim=-1).indices  # (B, k)
        beam, token = top // logp.shape[-1], top % logp.shape[-1]
        scores, lengths = total.flatten(1).gather(1, top), new_lengths.gather(1, beam)
        done = done.gather(1, beam) | (token == eos_id)
        seqs = torch.cat([seqs.view(batch, num_beams, -1)[rows, beam], token[..., None]], dim=-1).flatten(0, 1)
        if done.all():
            break
    best = (scores / lengths.clamp_min(1) ** length_penalty).argmax(-1)  # (B,)
    return seqs.view(batch, num_beams, -1)[rows[:, 0], best, start.shape[1] :]
