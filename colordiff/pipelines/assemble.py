"""Combining separately trained parts into one model folder."""

from __future__ import annotations

from pathlib import Path

from colordiff.io import atomic_folder
from colordiff.models import LuminanceAwareAutoencoderKL
from colordiff.pipelines.registry import guarded_load, load_pipeline


def merge_decoder(model: str | Path, decoder_model: str | Path, output: str | Path, **hub_kwargs) -> Path:
    """`model` with the luminance-aware VAE of `decoder_model` (both model folders or hub ids) -> `output`.

    The usual order of paper 000: train the U-Net, train the decoder, then merge the decoder into the U-Net's folder.
    Both VAEs must share the frozen encoder (the latent space the U-Net was trained in): checked, not assumed.
    """
    pipe = load_pipeline(model, **hub_kwargs)
    vae = guarded_load(decoder_model, lambda: LuminanceAwareAutoencoderKL.from_pretrained(
        str(decoder_model), subfolder="vae", use_safetensors=True, **hub_kwargs), ["vae"], **hub_kwargs)
    theirs, ours = vae.state_dict(), pipe.vae.state_dict()
    differing = [k for k in ours if k.startswith(("encoder.", "quant_conv.")) and not ours[k].equal(theirs[k])]
    if differing:
        raise ValueError(f"{decoder_model}: its VAE encoder differs from {model}'s ({differing[0]} and "
                         f"{len(differing) - 1} more): the decoder was trained for another latent space")
    pipe.vae = vae
    save_pipeline_atomically(pipe, Path(output))
    return Path(output)


def save_pipeline_atomically(pipe, target: str | Path) -> Path:
    """save_pretrained (safetensors) into a hidden staging folder, then swapped in: the model folder is whole or
    absent, and readable as the umask allows (not the library's 0o600)."""
    with atomic_folder(target) as staging:
        pipe.save_pretrained(staging, safe_serialization=True)
    return Path(target)
