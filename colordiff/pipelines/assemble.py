"""Combining separately trained parts into one model folder."""

from __future__ import annotations

from pathlib import Path

from colordiff.io import atomic_folder
from colordiff.model_card import read_card, write_model_card
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
    record = read_card(decoder_model)[0].get("colordiff") if Path(decoder_model).is_dir() else None
    how = (record.get("trained") or {}).get("vae") if isinstance(record, dict) else None
    if how is None:  # the decoder folder's card records no training of its VAE, or it has no card
        how = "untrained" if isinstance(record, dict) else "not recorded"
    trained = {"vae": f"{how}; merged from `{decoder_model}` (merge-decoder)"}
    save_pipeline_atomically(pipe, Path(output), card={"previous": model, "trained": trained})
    return Path(output)


def save_pipeline_atomically(pipe, target: str | Path, card: dict | None = None) -> Path:
    """save_pretrained (safetensors) into a hidden staging folder, then swapped in: the model folder is whole or
    absent, and readable as the umask allows (not the library's 0o600). `card`: the keyword arguments of
    colordiff.model_card.write_model_card for the folder's README.md (None: no card)."""
    with atomic_folder(target) as staging:
        pipe.save_pretrained(staging, safe_serialization=True)
        if card is not None:
            write_model_card(staging, shown_as=target, **card)
    return Path(target)
