"""Tiny random components with Stable Diffusion's shapes, for tests, smoke runs and CPU benchmarks.

They go through the same `save_pretrained` / `from_pretrained` code that real weights use: nothing here downloads.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from tokenizers import AddedToken
from tokenizers.pre_tokenizers import ByteLevel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

TINY_TEXT_DIM = 32
TINY_MAX_TOKENS = 77  # as CLIP's, so prompt handling is exercised as with SD

# Stable Diffusion 1.5's noise schedule (its scheduler_config.json), used by DDIM at inference and DDPM in training
SD15_SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}


def tiny_unet(seed: int = 0) -> UNet2DConditionModel:
    """An SD-shaped U-Net (cross-attention down/up blocks) with a few channels; latent /2 per block."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=TINY_TEXT_DIM,
            attention_head_dim=8,
            norm_num_groups=32,
        )


def tiny_vae(seed: int = 0) -> AutoencoderKL:
    """An SD-shaped VAE: four blocks (downsampling x8, as SD's), 4 latent channels, SD's scaling factor."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(8, 16, 16, 16),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=8,
            sample_size=64,
            scaling_factor=0.18215,
        )


def tiny_tokenizer(words: Iterable[str] = ()) -> CLIPTokenizer:
    """A byte-level CLIP tokenizer: real tokenizer code, no download. One token per character, and for each of
    `words` (ASCII letters, two or more) one whole-word token, as CLIP's own vocabulary holds whole tokens for common
    words. Any other word is still spelled out in characters.

    The words are added tokens matched as whole words (after CLIP's lowercasing), not BPE merges: BPE applies the
    lowest-ranked merge anywhere in a word, so one word's merges split others ("un" of "under" inside "mountain"),
    and no order of merges keeps every word of a large vocabulary whole (the photo lab's 1,675 caption words: 1,234
    split into pieces)."""
    alphabet = sorted(ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab.update({c + "</w>": len(alphabet) + i for i, c in enumerate(alphabet)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=TINY_MAX_TOKENS)
    whole = sorted({w.lower() for w in words if len(w) > 1 and w.isascii() and w.isalpha()})
    tokenizer.add_tokens([AddedToken(w, single_word=True, normalized=True) for w in whole])
    return tokenizer


def caption_words(texts: Iterable[str]) -> list[str]:
    """The distinct words (runs of letters, lowercased) of `texts`, sorted."""
    return sorted({w for text in texts for w in re.findall(r"[a-z]+", text.lower())})


def tiny_text_encoder(seed: int = 0, tokenizer: CLIPTokenizer | None = None) -> CLIPTextModel:
    """A two-layer CLIP text encoder for a `tiny_tokenizer`'s vocabulary (None: the one without words)."""
    tokenizer = tokenizer or tiny_tokenizer()
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TINY_TEXT_DIM,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=TINY_MAX_TOKENS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPTextModel(config).eval()


def tiny_scheduler() -> DDIMScheduler:
    return DDIMScheduler(**SD15_SCHEDULER_CONFIG)


def tiny_stable_diffusion(seed: int = 0) -> StableDiffusionPipeline:
    """A tiny random text-to-image Stable Diffusion pipeline: stands in for SD1.5 in tests of `init-model --base`."""
    return StableDiffusionPipeline(
        vae=tiny_vae(seed),
        text_encoder=tiny_text_encoder(seed),
        tokenizer=tiny_tokenizer(),
        unet=tiny_unet(seed),
        scheduler=tiny_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_tiny_stable_diffusion(path: str | Path, seed: int = 0) -> Path:
    """Write a tiny SD1.5-layout folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/) in safetensors."""
    tiny_stable_diffusion(seed).save_pretrained(path, safe_serialization=True)
    return Path(path)


def tiny_colordiff_pipeline(seed: int = 0):
    """An untrained tiny ColorDiff pipeline built exactly as from SD1.5 (identity / zero initialisations)."""
    from colordiff.pipelines import ColorDiffPipeline

    return ColorDiffPipeline.from_stable_diffusion_components(tiny_stable_diffusion(seed))


def sd15_shaped_stable_diffusion(seed: int = 0, dtype=torch.float32) -> StableDiffusionPipeline:
    """Random weights with Stable Diffusion 1.5's exact architecture (860M U-Net, 84M VAE, 123M CLIP-L text).

    For timing and memory measurements where real weights are neither needed nor available. The tokenizer is the
    tiny byte-level one: token ids fit the real vocabulary size and prompts still pad to 77 tokens.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
        vae = AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            latent_channels=4,
            sample_size=512,
            scaling_factor=0.18215,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                           num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                           projection_dim=768)
        ).eval()
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tiny_tokenizer(), unet=unet, scheduler=tiny_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    return pipe.to(dtype=dtype) if dtype != torch.float32 else pipe


def tiny_seada_pipeline(seed: int = 0, use_rca: bool = True):
    """An untrained tiny SeAda pipeline built exactly as from SD1.5 (zero convs, zero RCA outputs, identity MLP)."""
    from colordiff.pipelines.seada_pipeline import SeAdaPipeline

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SeAdaPipeline.from_stable_diffusion_components(tiny_stable_diffusion(seed), use_rca=use_rca,
                                                              rca_head_dim=8)


# -- data -----------------------------------------------------------------------------------------------------------
def write_captioned_images(root: str | Path, count: int, height: int, width: int,
                           color_caption: str = "a colorful photo {i}", captioner: str | None = None) -> Path:
    """`count` smooth colorful PNGs root/img{i}.png and their caption cache root/captions.jsonl (Des_g, Des_c), as
    scripts/caption.py writes it; training data for the tiny recipes."""
    import json

    import numpy as np
    from PIL import Image

    root = Path(root)
    yy, xx = np.mgrid[0:height, 0:width] / height
    lines = []
    for i in range(count):
        rgb = np.stack([np.sin(xx * 3 + i), np.cos(yy * 2 + i), xx * yy], -1) * 0.5 + 0.5  # (H, W, 3) in [0, 1]
        Image.fromarray((rgb * 255).astype(np.uint8)).save(root / f"img{i}.png")
        line = {"path": f"img{i}.png", "caption_gray": f"a gray photo {i}", "caption_color": color_caption.format(i=i)}
        lines.append(json.dumps(line | ({"captioner": captioner} if captioner else {})))
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return root
