"""The miniature's stand-in for Stable Diffusion 1.5: a small VAE trained here on photos, a random U-Net of a fixed
mini architecture, the tiny CLIP text encoder and tokenizer, SD1.5's noise schedule, written in SD's folder layout.

From that folder on only the papers' scripts run (`colordiff init-model --base`, train_unet.py, train_decoder.py,
train_seada.py), so the miniature exercises exactly the code path of the full-size recipes.

The VAE is normalised after training so that every latent channel has mean 0 and standard deviation 1 over the
training images (folded exactly into quant_conv and post_quant_conv; scaling_factor 1). Sampling starts from zero-mean
unit noise, so a latent space with per-channel offsets (a small VAE's channels have means of several units) would be
out of reach of the sampler, whatever the U-Net learns: it gives a uniform color cast.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from colordiff.color import rgb_to_gray, rgb_to_lab
from colordiff.config import check_settings, setting
from colordiff.io import atomic_folder, atomic_write
from colordiff.mini.captions import photo_texts
from colordiff.mini.photos import list_photos, load_photo, random_crops
from colordiff.testing import TINY_TEXT_DIM, caption_words, tiny_scheduler, tiny_text_encoder, tiny_tokenizer
from colordiff.training.config import PREDICTION_TYPES, NoiseScheduleConfig, schedule_settings


@dataclass
class MiniBaseConfig:
    """Settings of scripts/make_mini_base.py (configs/mini/base.yaml)."""

    data_dir: str = "???"  # a folder of color photos (recursive)
    heldout: list[str] = field(default_factory=list)  # file stems never trained on (the lab's held-out photos)
    heldout_dir: str | None = None  # or: a separate folder of held-out photos (the report's reconstruction test)
    output_dir: str = "outputs/mini/base"
    seed: int = 0
    image_size: int = 128  # every photo is first resized to this shorter side: the miniature's full resolution
    threads: int = 0  # torch CPU threads (0: torch's default)
    checkpoint_steps: int = 250  # the VAE and the U-Net pretraining save their state this often (0: never)
    # VAE: AutoencoderKL with len(vae_channels) blocks (downsampling 2^(blocks - 1))
    vae_channels: list[int] = field(default_factory=lambda: [64, 128, 128])
    vae_layers_per_block: int = 1
    vae_latent_channels: int = 4
    vae_crop: int = 64  # training crops (pixels), cut after a random extra zoom of resize_range
    resize_range: list[float] = field(default_factory=lambda: [1.0, 2.0])  # crop side x U(low, high) = shorter side
    resize_range_unet: list[float] = field(default_factory=lambda: [1.0, 2.0])  # the same for U-Net pretraining
    vae_steps: int = 1500
    vae_batch_size: int = 16
    vae_learning_rate: float = 5e-4
    vae_gray_fraction: float = 0.15  # share of gray crops: z_c is the encoding of a gray image
    vae_kl_weight: float = 1e-6
    # the posterior's log-variance at the start (None: diffusers' init, about 0, i.e. latent noise of std 1 over
    # latents of std ~0.1, which drowns the colors' small signal for the first few hundred steps; -10: noise 0.007)
    vae_initial_logvar: float | None = None
    vae_chroma_weight: float = 1.0  # L1 on Lab a/b (/ 100): plain RGB losses wash colors out
    # a built base whose (trained, normalised) VAE this base takes instead of training one; the VAE's training settings
    # above are then not read, but vae_channels, vae_crop and vae_latent_channels must be its own (checked)
    vae_from: str | None = None
    autocast_bf16: bool = True  # bfloat16 autocast on the CPU (faster where the CPU has bf16 instructions)
    # U-Net: random, UNet2DConditionModel with cross-attention on the tiny CLIP's 32-d embeddings
    unet_channels: list[int] = field(default_factory=lambda: [64, 128, 128])
    unet_layers_per_block: int = 1
    unet_cross_attention: list[bool] | None = None  # per level; None: every level but the deepest (SD's pattern)
    # attention heads per level; None: SD1.5's 8 at every level (at these widths heads of 4-16 channels: slow on a CPU)
    unet_attention_heads: list[int] | None = None
    # U-Net pretraining as a text-to-image model on the photos (the prior SD1.5 brings; 0 steps: left random)
    captions: str | None = None  # JSONL with "path" (file name) and `caption_key` per photo; None: empty text
    caption_key: str = "caption_color"
    # one token per word of the training captions (as SD's CLIP has for common words); False: one per character,
    # which leaves a 32-d random text encoder to spell every word out (a color word is 4-6 tokens among ~60)
    word_tokens: bool = False
    unet_pretrain_steps: int = 0
    unet_crop: int = 64
    unet_batch_size: int = 16
    unet_learning_rate: float = 2e-4
    unet_text_dropout: float = 0.1
    # the prior's target and schedule ("epsilon" on SD1.5's: SD1.5's own; "v_prediction" with zero terminal SNR: the
    # SD 2.x-v kind, for recipes that fine-tune it with the v target (docs/training.md, "Zero terminal SNR"))
    unet_prediction_type: str = setting("epsilon", choices=PREDICTION_TYPES)
    unet_zero_terminal_snr: bool = False

    def config_checks(self):
        """Checked when the settings are read (load_config) and at the start of make_mini_base."""
        if self.unet_zero_terminal_snr and self.unet_prediction_type != "v_prediction":
            yield "unet_zero_terminal_snr", "needs unet_prediction_type v_prediction (eps says nothing at SNR 0)"


def build_vae(config: MiniBaseConfig) -> AutoencoderKL:
    blocks = len(config.vae_channels)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * blocks,
                         up_block_types=("UpDecoderBlock2D",) * blocks, block_out_channels=tuple(config.vae_channels),
                         layers_per_block=config.vae_layers_per_block, latent_channels=config.vae_latent_channels,
                         norm_num_groups=32, sample_size=config.vae_crop, scaling_factor=1.0)
    if config.vae_initial_logvar is not None:
        with torch.no_grad():  # quant_conv emits (mean, logvar): its logvar half starts at this bias
            vae.quant_conv.bias[config.vae_latent_channels:] = config.vae_initial_logvar
    return vae


def build_unet(config: MiniBaseConfig) -> UNet2DConditionModel:
    """The mini U-Net: SD's block types (cross-attention in all but the deepest level unless set), few channels."""
    levels = len(config.unet_channels)
    attention = config.unet_cross_attention or [True] * (levels - 1) + [False]
    if len(attention) != levels:
        raise ValueError(f"unet_cross_attention needs one entry per level ({levels}), got {attention}")
    heads = config.unet_attention_heads or [8] * levels
    if len(heads) != levels or any(h < 1 or c % h for h, c in zip(heads, config.unet_channels, strict=False)):
        raise ValueError(f"unet_attention_heads needs one entry per level ({levels}), each dividing its level's "
                         f"channels {config.unet_channels}; got {heads}")
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention))
    return UNet2DConditionModel(
        sample_size=config.vae_crop // 2 ** (len(config.vae_channels) - 1), in_channels=config.vae_latent_channels,
        out_channels=config.vae_latent_channels, block_out_channels=tuple(config.unet_channels),
        layers_per_block=config.unet_layers_per_block, down_block_types=down, up_block_types=up,
        cross_attention_dim=TINY_TEXT_DIM, attention_head_dim=tuple(heads), norm_num_groups=32)


def vae_loss(vae: AutoencoderKL, x: torch.Tensor, config: MiniBaseConfig) -> tuple[torch.Tensor, dict]:
    """x (B, 3, H, W) in [0, 1]: MSE + L1 on RGB, L1 on Lab a/b, a little KL."""
    posterior = vae.encode(x * 2 - 1).latent_dist
    recon = (vae.decode(posterior.sample()).sample.float() + 1) / 2  # (B, 3, H, W)
    mse = F.mse_loss(recon, x)
    l1 = F.l1_loss(recon, x)
    chroma = F.l1_loss(rgb_to_lab(recon.clamp(0, 1))[:, 1:], rgb_to_lab(x)[:, 1:]) / 100
    kl = posterior.kl().mean() / x[0].numel()
    loss = mse + l1 + config.vae_chroma_weight * chroma + config.vae_kl_weight * kl
    return loss, {"mse": float(mse.detach()), "chroma": float(chroma.detach())}


def cosine_with_warmup(step: int, total: int) -> float:
    """Learning-rate factor: linear warm-up over the first 5 % of the steps, then a cosine to zero."""
    warmup = max(1, total // 20)
    return min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, step / total)))


def train_vae(photos: list[torch.Tensor], config: MiniBaseConfig, log, progress: Path | None = None) -> AutoencoderKL:
    """Train the VAE; with a progress file, its state is saved every checkpoint_steps and a stopped run resumes
    there exactly (same weights as an uninterrupted run)."""
    torch.manual_seed(config.seed)
    vae = build_vae(config).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_learning_rate, weight_decay=0.0)
    generator = torch.Generator().manual_seed(config.seed)
    first = load_progress(progress, vae, optimizer, generator, config, log)
    start = time.time()
    for step in range(first, config.vae_steps):
        for group in optimizer.param_groups:
            group["lr"] = config.vae_learning_rate * cosine_with_warmup(step, config.vae_steps)
        x = random_crops(photos, config.vae_batch_size, config.vae_crop, config.resize_range, generator)
        gray = torch.rand(len(x), generator=generator) < config.vae_gray_fraction
        x = torch.where(gray[:, None, None, None], rgb_to_gray(x), x)
        with torch.autocast("cpu", torch.bfloat16, enabled=config.autocast_bf16):
            loss, parts = vae_loss(vae, x, config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        if step % 100 == 0 or step == config.vae_steps - 1:
            log(f"vae step {step}/{config.vae_steps} loss {loss.item():.4f} mse {parts['mse']:.5f} "
                f"chroma {parts['chroma']:.4f} ({time.time() - start:.0f} s)")
        if _due(step + 1, config.vae_steps, config.checkpoint_steps):
            save_progress(progress, step + 1, vae, optimizer, generator, config)
    return vae.eval()


def _due(done: int, total: int, every: int) -> bool:
    return done == total or (every > 0 and done % every == 0)


def fingerprint(config: MiniBaseConfig) -> str:
    """What a saved state must have been trained with to be resumed: every setting but where it goes and threads."""
    settings = {k: v for k, v in asdict(config).items() if k not in ("output_dir", "threads", "checkpoint_steps")}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def save_progress(path: Path | None, step: int, module: torch.nn.Module, optimizer: torch.optim.Optimizer,
                  generator: torch.Generator, config: MiniBaseConfig) -> None:
    """One training phase's whole state in one safetensors file (weights, Adam moments, both random streams),
    written atomically."""
    if path is None:
        return
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in module.state_dict().items()}
    for index, state in optimizer.state_dict()["state"].items():
        tensors.update({f"optim.{index}.{k}": torch.as_tensor(v).contiguous() for k, v in state.items()})
    tensors.update({"rng.generator": generator.get_state(), "rng.torch": torch.get_rng_state()})
    with atomic_write(path) as tmp:
        save_file(tensors, str(tmp), metadata={"step": str(step), "fingerprint": fingerprint(config)})


def load_progress(path: Path | None, module: torch.nn.Module, optimizer: torch.optim.Optimizer,
                  generator: torch.Generator, config: MiniBaseConfig, log) -> int:
    """Restore a phase saved by save_progress; returns the number of steps done (0 without a saved state)."""
    if path is None or not path.is_file():
        return 0
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata() or {}
    if metadata.get("fingerprint") != fingerprint(config):
        raise ValueError(f"{path}: saved with other settings than these; delete {path.parent} to start over")
    tensors = load_file(str(path))
    module.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})
    generator.set_state(tensors["rng.generator"])
    torch.set_rng_state(tensors["rng.torch"])
    step = int(metadata["step"])
    log(f"base: resuming {path.name} at step {step}")
    return step


@torch.no_grad()
def latent_statistics(vae: AutoencoderKL, photos: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of the posterior means over whole color photos (the latents diffusion models)."""
    values = [encode_photo(vae, photo).mean[0].flatten(1) for photo in photos]  # each (C, h*w)
    values = torch.cat(values, dim=1)
    return values.mean(1), values.std(1)


@torch.no_grad()
def normalise_latents(vae: AutoencoderKL, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Fold z' = (z - mean) / std into the VAE exactly: quant_conv emits the moments of z', post_quant_conv undoes it.

    quant_conv's output is (mu, logvar): mu' = (mu - mean) / std, logvar' = logvar - 2 log std. post_quant_conv reads
    z = std z' + mean: W' = W diag(std), b' = b + W mean.
    """
    c = len(mean)
    q = vae.quant_conv  # 1x1 conv (2C, 2C)
    q.weight[:c] /= std[:, None, None, None]
    q.bias[:c] = (q.bias[:c] - mean) / std
    q.bias[c:] -= 2 * torch.log(std)
    p = vae.post_quant_conv  # 1x1 conv (C, C)
    p.bias += (p.weight[:, :, 0, 0] @ mean)
    p.weight *= std[None, :, None, None]


def pad_to_latent_cells(vae: AutoencoderKL, photo: torch.Tensor) -> torch.Tensor:
    """(3, h, w) -> (1, 3, H, W) padded (replicated edges) to whole latent cells of `vae`."""
    multiple = 2 ** (len(vae.config.block_out_channels) - 1)
    h, w = photo.shape[-2:]
    return F.pad(photo[None], (0, (-w) % multiple, 0, (-h) % multiple), mode="replicate")


def encode_photo(vae: AutoencoderKL, photo: torch.Tensor):
    """The posterior of one photo (3, h, w) in [0, 1], padded to whole latent cells; decode and crop [..., :h, :w]
    to get the photo's size back."""
    return vae.encode(pad_to_latent_cells(vae, photo) * 2 - 1).latent_dist


@torch.no_grad()
def reconstruction_report(vae: AutoencoderKL, photos: list[torch.Tensor]) -> dict:
    """Held-out photos through the VAE (posterior mode): PSNR of the 8-bit RGB and colorfulness against the truth."""
    from colordiff import metrics

    psnr, cf, cf_gt = [], [], []
    for photo in photos:
        h, w = photo.shape[-2:]
        recon = ((vae.decode(encode_photo(vae, photo).mode()).sample[0, :, :h, :w] + 1) / 2).clamp(0, 1)
        pred, gt = (metrics.as_uint8_batch((x[None] * 255).round().to(torch.uint8)) for x in (recon, photo))
        psnr.append(float(metrics.psnr(pred, gt)[0]))
        cf.append(float(metrics.colorfulness(pred)[0]))
        cf_gt.append(float(metrics.colorfulness(gt)[0]))
    return {"heldout_psnr": float(np.mean(psnr)), "heldout_colorfulness": float(np.mean(cf)),
            "heldout_colorfulness_gt": float(np.mean(cf_gt)), "colorfulness_ratio": float(np.mean(cf) / np.mean(cf_gt)),
            "per_image_psnr": psnr}


def prior_scheduler(config: MiniBaseConfig):
    """SD1.5's DDIM schedule with the prior's prediction type (and zero terminal SNR, if set), trailing spacing."""
    from diffusers import DDIMScheduler

    settings = schedule_settings(NoiseScheduleConfig(zero_terminal_snr=config.unet_zero_terminal_snr,
                                                     prediction_type=config.unet_prediction_type))
    return DDIMScheduler.from_config(tiny_scheduler().config, **settings)


def pretrain_unet(pipe: StableDiffusionPipeline, photos: list[torch.Tensor], texts: list[str],
                  config: MiniBaseConfig, log, progress: Path | None = None) -> None:
    """Train pipe.unet as a text-to-image latent diffusion model (SD's loss and schedule, or the v target on a
    zero-terminal-SNR schedule: pipe.scheduler's config says which) on the photos; with a progress file, resumable
    exactly as train_vae."""
    from diffusers import DDPMScheduler

    if config.unet_pretrain_steps <= 0:
        return
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    velocity = scheduler.config.prediction_type == "v_prediction"
    unet, vae = pipe.unet.train(), pipe.vae.requires_grad_(False)
    with torch.no_grad():
        tokens = pipe.tokenizer(texts + [""], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt").input_ids
        embeddings = pipe.text_encoder(tokens)[0]  # (N + 1, L, d): the last one is the empty text
    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.unet_learning_rate, weight_decay=0.0)
    generator = torch.Generator().manual_seed(config.seed + 1)
    first = load_progress(progress, unet, optimizer, generator, config, log)
    start = time.time()
    for step in range(first, config.unet_pretrain_steps):
        picks = torch.randint(len(photos), (config.unet_batch_size,), generator=generator).tolist()
        x = random_crops(photos, len(picks), config.unet_crop, config.resize_range_unet, generator, picks)
        drop = torch.rand(len(picks), generator=generator) < config.unet_text_dropout
        emb = embeddings[[len(texts) if d else i for i, d in zip(picks, drop.tolist(), strict=True)]]
        with torch.no_grad():
            z = vae.encode(x * 2 - 1).latent_dist.sample(generator) * vae.config.scaling_factor  # (B, 4, h, w)
        noise = torch.randn(z.shape, generator=generator)
        t = torch.randint(scheduler.config.num_train_timesteps, (len(picks),), generator=generator)
        with torch.autocast("cpu", torch.bfloat16, enabled=config.autocast_bf16):
            pred = unet(scheduler.add_noise(z, noise, t), t, emb).sample
        target = scheduler.get_velocity(z, noise, t) if velocity else noise  # (B, 4, h, w)
        loss = F.mse_loss(pred.float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        if step % 100 == 0 or step == config.unet_pretrain_steps - 1:
            log(f"unet pretraining step {step}/{config.unet_pretrain_steps} loss {loss.item():.4f} "
                f"({time.time() - start:.0f} s)")
        if _due(step + 1, config.unet_pretrain_steps, config.checkpoint_steps):
            save_progress(progress, step + 1, unet, optimizer, generator, config)
    unet.eval()


def make_mini_base(config: MiniBaseConfig, log=print) -> Path:
    """Train the VAE, assemble the SD-layout base folder (written atomically) and its report; returns the folder.
    An existing complete folder is reused (delete it to rebuild). Training state is kept in <output_dir>.progress
    while the base is built: a stopped build resumes where it stopped and ends as an uninterrupted one would."""
    check_settings(config)  # a config built in code gets load_config's checks too, before the VAE trains
    out = Path(config.output_dir)
    if (out / "model_index.json").is_file():
        log(f"base: reusing {out}")
        return out
    if config.threads:
        torch.set_num_threads(config.threads)
    train_files, heldout_files = list_photos(config.data_dir, config.heldout)
    if not train_files:
        raise ValueError(f"{config.data_dir}: no color training photos")
    if config.heldout_dir is not None:
        heldout_files += list_photos(config.heldout_dir, [])[0]
    train = [load_photo(p, config.image_size) for p in train_files]
    heldout = [load_photo(p, config.image_size) for p in heldout_files]
    log(f"base: {len(train)} training photos, {len(heldout)} held out, shorter side {config.image_size}")
    progress = Path(f"{out}.progress")
    start = time.time()
    if config.vae_from is not None:
        if not (Path(config.vae_from) / "vae" / "config.json").is_file():
            raise FileNotFoundError(f"vae_from {config.vae_from}: no vae/ folder there (build that base first)")
        vae = AutoencoderKL.from_pretrained(Path(config.vae_from) / "vae", local_files_only=True).eval()
        theirs = (list(vae.config.block_out_channels), vae.config.sample_size, vae.config.latent_channels)
        if theirs != (list(config.vae_channels), config.vae_crop, config.vae_latent_channels):
            raise ValueError("vae_from {}: its VAE has vae_channels {}, vae_crop {}, {} latent channels; give this "
                             "base the same vae_channels, vae_crop, vae_latent_channels".format(config.vae_from,
                                                                                                 *theirs))
        report = {**reconstruction_report(vae, heldout), "vae_from": str(config.vae_from)}
    else:
        vae = train_vae(train, config, log, progress / "vae.safetensors")
        mean, std = latent_statistics(vae, train)
        normalise_latents(vae, mean, std)
        after_mean, after_std = latent_statistics(vae, train)
        report = reconstruction_report(vae, heldout)
        report.update(latent_mean_before=mean.tolist(), latent_std_before=std.tolist(),
                      latent_mean=after_mean.tolist(), latent_std=after_std.tolist())
    report.update(vae_seconds=time.time() - start, vae_parameters=sum(p.numel() for p in vae.parameters()))
    torch.manual_seed(config.seed)
    unet = build_unet(config)
    report["unet_parameters"] = sum(p.numel() for p in unet.parameters())
    texts = photo_texts(train_files, config.captions, config.caption_key)
    tokenizer = tiny_tokenizer(caption_words(texts) if config.word_tokens else ())
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=tiny_text_encoder(config.seed, tokenizer),
                                   tokenizer=tokenizer, unet=unet, scheduler=prior_scheduler(config),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    report["text_tokens"] = len(tokenizer)
    begin = time.time()
    pretrain_unet(pipe, train, texts, config, log, progress / "unet.safetensors")
    report.update(unet_pretrain_steps=config.unet_pretrain_steps, unet_seconds=time.time() - begin)
    with atomic_folder(out) as staging:
        pipe.save_pretrained(staging, safe_serialization=True)
        with atomic_write(staging / "base_report.json") as tmp:
            tmp.write_text(json.dumps(report, indent=1))
    shutil.rmtree(progress, ignore_errors=True)
    log(f"base: held-out VAE reconstruction {report['heldout_psnr']:.2f} dB, colorfulness "
        f"{report['colorfulness_ratio']:.2f} x the truth's; wrote {out}")
    return out
