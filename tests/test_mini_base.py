"""The stand-in base (colordiff/mini/base.py) is resumable: a build stopped in the VAE phase and again in the U-Net
pretraining resumes from its saved state and ends with exactly the weights of an uninterrupted build."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from colordiff.config import load_config
from colordiff.mini import base as mini_base
from colordiff.mini.base import MiniBaseConfig, make_mini_base
from colordiff.mini.world import prepare_world


def _config(photos: Path, out: Path) -> MiniBaseConfig:
    return MiniBaseConfig(
        data_dir=str(photos / "train"), heldout_dir=str(photos / "gt"), output_dir=str(out), image_size=16,
        vae_channels=[32, 32], vae_crop=16, resize_range=[1.0, 1.0], vae_steps=4, vae_batch_size=2,
        autocast_bf16=False, unet_channels=[32, 32], unet_pretrain_steps=4, unet_crop=16, unet_batch_size=2,
        checkpoint_steps=2)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    found = {}
    for part in ("vae", "unet"):
        found.update({f"{part}.{k}": v for k, v in
                      load_file(folder / part / "diffusion_pytorch_model.safetensors").items()})
    return found


def _stop_at(monkeypatch, call: int) -> None:
    """Make the `call`-th training batch (VAE and U-Net pretraining draw one each step) stop the build."""
    crops, calls = mini_base.random_crops, {"n": 0}

    def crops_then_stop(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return crops(*args, **kwargs)

    monkeypatch.setattr(mini_base, "random_crops", crops_then_stop)


def test_a_stopped_base_build_resumes_to_the_same_weights(tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    prepare_world(photos, 6, 1, 0, 1000, 16)
    make_mini_base(_config(photos, tmp_path / "whole"), log=lambda *_: None)

    out = tmp_path / "stopped"
    progress = Path(f"{out}.progress")
    with monkeypatch.context() as patch:
        _stop_at(patch, 4)  # the 4th VAE step: steps 1-2 are saved, step 3 is lost
        with pytest.raises(KeyboardInterrupt):
            make_mini_base(_config(photos, out), log=lambda *_: None)
    assert (progress / "vae.safetensors").is_file() and not out.exists()
    with monkeypatch.context() as patch:
        _stop_at(patch, 2 + 4)  # resumed at VAE step 3: the VAE finishes (calls 1-2), U-Net steps 1-2 saved, 4 stops
        with pytest.raises(KeyboardInterrupt):
            make_mini_base(_config(photos, out), log=lambda *_: None)
    assert (progress / "unet.safetensors").is_file() and not out.exists()
    logs = []
    make_mini_base(_config(photos, out), log=logs.append)
    assert any("resuming unet.safetensors at step 2" in line for line in logs)
    assert not progress.exists()

    whole, resumed = _weights(tmp_path / "whole"), _weights(out)
    assert whole.keys() == resumed.keys()
    for key, value in whole.items():
        assert torch.equal(value, resumed[key]), key


def test_a_saved_state_from_other_settings_is_refused(tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    prepare_world(photos, 4, 1, 0, 1000, 16)
    out = tmp_path / "base"
    with monkeypatch.context() as patch:
        _stop_at(patch, 3)
        with pytest.raises(KeyboardInterrupt):
            make_mini_base(_config(photos, out), log=lambda *_: None)
    other = _config(photos, out)
    other.vae_learning_rate = 1e-3
    with pytest.raises(ValueError, match="other settings"):
        make_mini_base(other, log=lambda *_: None)


def test_a_v_prediction_prior_trains_on_the_velocity_and_says_so(tmp_path, monkeypatch):
    """unet_prediction_type v_prediction (+ zero terminal SNR): the pretraining loss is taken against the velocity
    of the zero-terminal-SNR schedule, and the base's scheduler records both, so that every recipe loading the base
    samples on the schedule and for the target the prior was trained with."""
    from diffusers import DDIMScheduler

    photos = tmp_path / "photos"
    prepare_world(photos, 6, 1, 0, 1000, 16)
    targets = []
    mse = mini_base.F.mse_loss
    monkeypatch.setattr(mini_base.F, "mse_loss", lambda pred, target: targets.append(target) or mse(pred, target))
    config = _config(photos, tmp_path / "v")
    config.unet_prediction_type, config.unet_zero_terminal_snr = "v_prediction", True
    make_mini_base(config, log=lambda *_: None)
    scheduler = DDIMScheduler.from_pretrained(tmp_path / "v", subfolder="scheduler")
    assert scheduler.config.prediction_type == "v_prediction" and scheduler.config.rescale_betas_zero_snr
    assert scheduler.config.timestep_spacing == "trailing" and float(scheduler.alphas_cumprod[-1]) == 0.0
    prior = targets[-config.unet_pretrain_steps :]  # the prior's losses come after the VAE's

    # the same draws with the eps target: the targets differ (velocity = sqrt(a) noise - sqrt(1 - a) z)
    eps_targets = []
    monkeypatch.setattr(mini_base.F, "mse_loss", lambda pred, target: eps_targets.append(target) or mse(pred, target))
    make_mini_base(_config(photos, tmp_path / "eps"), log=lambda *_: None)
    assert DDIMScheduler.from_pretrained(tmp_path / "eps", subfolder="scheduler").config.prediction_type == "epsilon"
    steps = config.unet_pretrain_steps
    assert len(targets) == len(eps_targets)
    assert all(not torch.allclose(v, eps) for v, eps in zip(prior, eps_targets[-steps:], strict=True))
    assert all(torch.equal(a, b) for a, b in zip(targets[:-steps], eps_targets[:-steps], strict=True))  # same VAE

    config.unet_prediction_type = "epsilon"  # zero terminal SNR without the v target: refused before any training
    config.output_dir = str(tmp_path / "refused")
    with pytest.raises(ValueError, match="unet_zero_terminal_snr needs"):
        make_mini_base(config, log=lambda *_: None)
    assert not (tmp_path / "refused.progress").exists()
    with pytest.raises(ValueError, match="unet_prediction_type must be one of"):
        load_config(MiniBaseConfig, [], [f"data_dir={photos}", "unet_prediction_type=sample"])


def test_word_tokens_give_each_caption_word_one_token_in_the_saved_base(tmp_path):
    """word_tokens: the base's tokenizer (saved with it, read back as every recipe reads it) holds one token per word
    of the training captions, its text encoder one embedding per token; without it, one token per character."""
    import json

    from transformers import CLIPTextModel, CLIPTokenizer

    photos = tmp_path / "photos"
    prepare_world(photos, 6, 1, 0, 1000, 16)
    config = _config(photos, tmp_path / "words")
    config.captions, config.word_tokens = str(photos / "captions.jsonl"), True
    make_mini_base(config, log=lambda *_: None)
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path / "words", subfolder="tokenizer")
    encoder = CLIPTextModel.from_pretrained(tmp_path / "words", subfolder="text_encoder")
    assert encoder.config.vocab_size == len(tokenizer)
    report = json.loads((tmp_path / "words" / "base_report.json").read_text())
    assert report["text_tokens"] == len(tokenizer)
    caption = json.loads((photos / "captions.jsonl").read_text().splitlines()[0])["caption_color"]
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(caption, add_special_tokens=False).input_ids)
    # "purple", not "p", "u", ...; "a" is a character token and the comma keeps its own
    assert tokens == [w if len(w) > 1 else w + "</w>" for w in caption.replace(",", " ,").split()]
    assert len(tokenizer("a greenish dog", add_special_tokens=False).input_ids) > 3  # unseen words: characters
    assert (encoder.config.bos_token_id, encoder.config.eos_token_id) == (tokenizer.bos_token_id,
                                                                          tokenizer.eos_token_id)


def test_tiny_tokenizer_keeps_every_word_whole_even_where_words_overlap():
    from colordiff.testing import caption_words, tiny_tokenizer

    words = caption_words(["A striped triangle, a green, red star; stars and tar."])
    assert words == ["a", "and", "green", "red", "star", "stars", "striped", "tar", "triangle"]
    # words that share pieces: with BPE merges "tr" of "triangle" split "striped", and "un" of "under" "mountain"
    words += ["mountain", "under", "water", "watermelons", "with", "within", "tin", "ain"]
    tokenizer = tiny_tokenizer(words)
    for word in words[1:]:
        assert tokenizer.convert_ids_to_tokens(tokenizer(word, add_special_tokens=False).input_ids) == [word]
    # whole words only, after CLIP's lowercasing: a word inside a longer one is not cut out of it
    ids = tokenizer("Mountain, WATERMELON water", add_special_tokens=False).input_ids
    assert tokenizer.convert_ids_to_tokens(ids)[:2] == ["mountain", ",</w>"]
    assert ids[-1] == tokenizer.convert_tokens_to_ids("water")
    assert len(ids) == 3 + len("watermelon")  # "watermelon" (not a word of the list) is spelled out
    plain = tiny_tokenizer()
    assert len(plain("red", add_special_tokens=False).input_ids) == 3 and len(tokenizer) == len(plain) + len(words) - 1


def test_tiny_tokenizer_saves_and_loads_with_its_words(tmp_path):
    from transformers import CLIPTokenizer

    from colordiff.testing import tiny_tokenizer

    tokenizer = tiny_tokenizer(["mountain", "water", "purple"])
    tokenizer.save_pretrained(tmp_path)
    loaded = CLIPTokenizer.from_pretrained(tmp_path)
    text = "a purple mountain over water, watery"
    assert loaded(text).input_ids == tokenizer(text).input_ids and len(loaded) == len(tokenizer)


def test_vae_initial_logvar_sets_the_posterior_noise_the_vae_starts_with():
    """vae_initial_logvar sets the log-variance half of quant_conv's bias: the posterior's noise is exp(lv / 2)."""
    settings = dict(data_dir="x", vae_channels=[32, 32], vae_crop=16)
    torch.manual_seed(0)
    default = mini_base.build_vae(MiniBaseConfig(**settings))
    torch.manual_seed(0)
    quiet = mini_base.build_vae(MiniBaseConfig(**settings, vae_initial_logvar=-10.0))
    assert torch.all(quiet.quant_conv.bias[4:] == -10.0)
    assert torch.equal(quiet.quant_conv.bias[:4], default.quant_conv.bias[:4])  # the mean half is left alone
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        std = quiet.encode(x).latent_dist.std  # (1, 4, 8, 8)
        default_std = default.encode(x).latent_dist.std
    assert std.max() < 0.05 < default_std.min()


def test_unet_attention_heads_set_each_levels_head_count_and_bad_counts_are_refused():
    """unet_attention_heads gives each level's attention (self and cross) that many heads; the default is SD1.5's 8."""
    settings = dict(data_dir="x", vae_channels=[32, 32, 32], unet_channels=[32, 64, 64])

    def heads(unet):
        return [block.attentions[0].transformer_blocks[0].attn1.heads for block in unet.down_blocks
                if hasattr(block, "attentions")]

    assert heads(mini_base.build_unet(MiniBaseConfig(**settings))) == [8, 8]
    unet = mini_base.build_unet(MiniBaseConfig(**settings, unet_attention_heads=[1, 2, 2]))
    assert heads(unet) == [1, 2]
    assert unet.mid_block.attentions[0].transformer_blocks[0].attn2.heads == 2
    assert unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.inner_dim == 32  # one head of 32 channels
    for bad in ([1, 2], [3, 2, 2], [0, 2, 2]):
        with pytest.raises(ValueError, match="unet_attention_heads"):
            mini_base.build_unet(MiniBaseConfig(**settings, unet_attention_heads=bad))


def test_a_base_from_another_bases_vae_keeps_that_vae_and_trains_only_a_new_prior(tmp_path, monkeypatch):
    """vae_from: the new base's VAE is the given base's (weights equal, no VAE step taken), its prior is trained."""
    photos = tmp_path / "photos"
    prepare_world(photos, 6, 1, 0, 1000, 16)
    make_mini_base(_config(photos, tmp_path / "first"), log=lambda *_: None)
    calls = []
    crops = mini_base.random_crops
    monkeypatch.setattr(mini_base, "random_crops", lambda *a, **k: calls.append(a[2]) or crops(*a, **k))
    config = _config(photos, tmp_path / "second")
    config.vae_from, config.unet_prediction_type, config.unet_zero_terminal_snr = str(tmp_path / "first"), \
        "v_prediction", True
    make_mini_base(config, log=lambda *_: None)
    assert len(calls) == config.unet_pretrain_steps  # U-Net batches only: no VAE training
    first, second = _weights(tmp_path / "first"), _weights(tmp_path / "second")
    vae_keys = [k for k in first if k.startswith("vae.")]
    assert vae_keys and all(torch.equal(first[k], second[k]) for k in vae_keys)
    assert not all(torch.equal(first[k], second[k]) for k in first if k.startswith("unet."))
    import json

    report = json.loads((tmp_path / "second" / "base_report.json").read_text())
    assert report["vae_from"] == str(tmp_path / "first") and report["heldout_psnr"] == pytest.approx(
        json.loads((tmp_path / "first" / "base_report.json").read_text())["heldout_psnr"], abs=1e-6)
    config.output_dir, config.vae_latent_channels = str(tmp_path / "third"), 8
    with pytest.raises(ValueError, match="4 latent channels"):
        make_mini_base(config, log=lambda *_: None)
    first_config = _config(photos, tmp_path / "first")
    for key, value in (("vae_channels", [*first_config.vae_channels, 32]), ("vae_crop", 2 * first_config.vae_crop)):
        config = _config(photos, tmp_path / "fourth")  # the U-Net's sample size follows from these: they must match
        config.vae_from = str(tmp_path / "first")
        setattr(config, key, value)
        with pytest.raises(ValueError, match="give this base the same vae_channels, vae_crop"):
            make_mini_base(config, log=lambda *_: None)
    config.vae_from, config.vae_latent_channels = str(tmp_path / "none"), 4
    with pytest.raises(FileNotFoundError, match="no vae/ folder"):
        make_mini_base(config, log=lambda *_: None)


def test_prior_check_scores_samples_by_their_categorys_color(tmp_path):
    """Categories are captions shared by min_photos photos; the photos' own nearest-centroid accuracy is the
    ceiling; every guidance scale gets an accuracy in [0, 1] per category, and the grid holds a photo + samples."""
    import json

    from colordiff.io import read_image
    from colordiff.mini.prior_check import PriorCheckConfig, categories, mean_lab, nearest, prior_check

    photos = tmp_path / "photos"
    prepare_world(photos, 8, 1, 0, 1000, 16)
    captions = tmp_path / "captions.jsonl"
    names = sorted(p.name for p in (photos / "train").glob("*.png"))
    texts = ["a photo of a red thing", "a photo of a blue thing"]
    captions.write_text("".join(json.dumps({"path": n, "caption_color": texts[i % 2]}) + "\n"
                                for i, n in enumerate(names)) + json.dumps({"path": "x.png", "caption_color": "rare"}))
    captions.write_text(captions.read_text() + "\n" + json.dumps({"path": "held.png", "caption_color": texts[0]}))
    expected = {t: names[i::2] for i, t in sorted(enumerate(texts), key=lambda x: x[1])}
    assert categories(str(captions), "caption_color", 2, str(photos / "train")) == expected  # held.png: not there
    red, blue = torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4)
    red[:, 0], blue[:, 2] = 1.0, 1.0
    centroids = mean_lab(torch.cat([red, blue]))
    assert nearest(mean_lab(torch.cat([blue * 0.9, red * 0.8])), centroids).tolist() == [1, 0]

    config = _config(photos, tmp_path / "base")
    config.captions, config.word_tokens = str(captions), True
    make_mini_base(config, log=lambda *_: None)
    out = prior_check(PriorCheckConfig(base=str(tmp_path / "base"), data_dir=str(photos / "train"),
                                       captions=str(captions), output_dir=str(tmp_path / "check"), min_photos=2,
                                       samples=2, steps=2, guidance_scales=[1.0, 3.0], size=16))
    report = json.loads(out.read_text())
    assert report["chance"] == 0.5 and set(report["guidance"]) == {"1.0", "3.0"}
    assert 0.0 <= report["photos_ceiling"] <= 1.0
    for scores in report["guidance"].values():
        assert set(scores["per_category"]) == set(texts) and 0.0 <= scores["accuracy"] <= 1.0
    assert read_image(tmp_path / "check" / "samples.png").rgb.shape == (2 * 16, 3 * 16, 3)
