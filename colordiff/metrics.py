"""
Colorization metrics as pure, batched tensor functions: colorfulness (two variants), ΔCF, PSNR, SSIM, LPIPS and FID.

Every per-image metric takes 8-bit RGB shaped (B, 3, H, W) (a uint8 tensor, or uint8 arrays (H, W, 3) /
(B, H, W, 3)) and returns one float64 value per image, shape (B,); a set's score is the mean over its images. Metrics
are defined on the 8-bit images as saved, so nothing here rescales: a float input is refused rather than guessed at.

FID runs through torchmetrics' FrechetInceptionDistance with a feature extractor chosen by name (FID_VARIANTS):
- "fidelity": torch-fidelity's InceptionV3 (the TF FID weights of Heusel et al.,
  `weights-inception-2015-12-05-6726825d.pth`), images resized to 299 with TF1-compatible bilinear interpolation
  and mapped by (x − 128) / 128: torch-fidelity's FID. It is not pytorch-fid's, which resizes with PyTorch's bilinear
  interpolation on [0, 1] and then maps to [-1, 1], so its values can differ slightly.
- "torchvision": torchvision's ImageNet Inception-v3 (`inception_v3_google-*.pth`) with the preprocessing of the CT2
  evaluation script (`INCEPTION_V3_FID` in CT2's segm/metrics.py, copied into DDColor's basicsr/metrics/custom_fid.py),
  whose numbers fill the comparison tables of both papers.
Weights always come from a local file (nothing downloads): safetensors, or a PyTorch pickle read with
torch.load(weights_only=True), which accepts plain tensors only and never runs code from the file.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from colordiff.config import error_line

COLORFULNESS_VARIANTS = ("abs", "hasler")


class WeightsError(ValueError):
    """A weights file that is missing or unusable, with the path and a one-line reason."""


# -----------------------------------------------------------------------------
# input handling


def as_uint8_batch(images) -> torch.Tensor:
    """8-bit RGB as uint8 (B, 3, H, W), from tensors (B, 3, H, W) / (3, H, W) or arrays (B, H, W, 3) / (H, W, 3)."""
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise TypeError(f"metrics take 8-bit RGB (uint8), got an array of {images.dtype}")
        x = torch.from_numpy(np.array(images))  # a copy: arrays from PIL are read-only
        x = x.unsqueeze(0) if x.dim() == 3 else x
        if x.dim() != 4 or x.shape[-1] != 3:
            raise ValueError(f"arrays must be shaped (H, W, 3) or (B, H, W, 3), got {tuple(images.shape)}")
        return x.permute(0, 3, 1, 2)  # (B, 3, H, W)
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"expected a uint8 tensor or array, got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise TypeError(f"metrics take 8-bit RGB (uint8), got a tensor of {images.dtype}")
    x = images.unsqueeze(0) if images.dim() == 3 else images
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"tensors must be shaped (3, H, W) or (B, 3, H, W), got {tuple(images.shape)}")
    return x


def _pair(pred, gt) -> tuple[torch.Tensor, torch.Tensor]:
    p, g = as_uint8_batch(pred), as_uint8_batch(gt)
    if p.shape != g.shape:
        raise ValueError(f"pred {tuple(p.shape)} and gt {tuple(g.shape)} must have the same shape")
    return p.double(), g.to(p.device).double()  # float64: per-image sums over 10^5+ pixels stay exact enough


# -----------------------------------------------------------------------------
# colorfulness


def colorfulness(images, variant: str = "abs") -> torch.Tensor:
    """Hasler & Süsstrunk (2003) M3: CF = sqrt(σ_rg² + σ_yb²) + 0.3·sqrt(μ_rg² + μ_yb²) on RGB 0-255; (B,) float64.

    variant "hasler": rg = R − G, yb = ½(R + G) − B, as in the original paper.
    variant "abs": rg = |R − G|, yb = |½(R + G) − B|, as in the CT2 / DDColor evaluation scripts (and the widely copied
    pyimagesearch code); the numbers in both papers' tables are of this kind. σ is the population standard deviation.
    """
    if variant not in COLORFULNESS_VARIANTS:
        raise ValueError(f"unknown colorfulness variant {variant!r}; choose from {COLORFULNESS_VARIANTS}")
    R, G, B = as_uint8_batch(images).double().unbind(1)  # each (B, H, W)
    rg = R - G
    yb = 0.5 * (R + G) - B
    if variant == "abs":
        rg, yb = rg.abs(), yb.abs()
    rg, yb = rg.flatten(1), yb.flatten(1)  # (B, H*W)
    std_root = torch.sqrt(rg.var(dim=1, correction=0) + yb.var(dim=1, correction=0))
    mean_root = torch.sqrt(rg.mean(dim=1) ** 2 + yb.mean(dim=1) ** 2)
    return std_root + 0.3 * mean_root


def delta_cf(cf_pred, cf_gt) -> float:
    """ΔCF = |mean CF(pred) − mean CF(gt)| over a set (DDColor's definition, used in SeAda's Table 1)."""
    return abs(float(np.mean(np.asarray(cf_pred, dtype=np.float64))) - float(np.mean(np.asarray(cf_gt, np.float64))))


def delta_cf_per_image(cf_pred, cf_gt) -> float:
    """ΔCF per image = mean over the images of |CF(pred_i) − CF(gt_i)|, the other reading of ΔCF (no peer code
    defines ΔCF and both appear in the literature); unlike delta_cf, errors of opposite sign do not cancel."""
    p, g = np.asarray(cf_pred, dtype=np.float64), np.asarray(cf_gt, dtype=np.float64)
    if p.shape != g.shape:
        raise ValueError(f"cf_pred {p.shape} and cf_gt {g.shape} must pair image by image")
    return float(np.mean(np.abs(p - g)))


def delta_ab(pred, gt) -> torch.Tensor:
    """Mean per-pixel CIELAB chroma error sqrt(Δa² + Δb²) of uint8 RGB pairs (B, 3, H, W) -> (B,) float64. With the
    input's L kept, it measures the colors alone (the gray input scores the ground truth's mean chroma)."""
    from colordiff.color import rgb_to_lab

    p, g = (rgb_to_lab(x.double() / 255)[:, 1:] for x in _pair(pred, gt))  # (B, 2, H, W)
    return (p - g).square().sum(1).sqrt().mean((-2, -1))


# -----------------------------------------------------------------------------
# reference metrics


def psnr(pred, gt) -> torch.Tensor:
    """PSNR = 10·log10(255² / MSE) over all pixels and channels of 8-bit RGB, per image; (B,) float64 (inf if equal)."""
    p, g = _pair(pred, gt)
    mse = (p - g).pow(2).flatten(1).mean(dim=1)  # (B,)
    return 10.0 * torch.log10(255.0**2 / mse)  # mse = 0 gives inf, as skimage


def ssim(pred, gt, win_size: int = 7, k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """SSIM (Wang et al. 2004) with skimage's defaults: 7x7 uniform window, sample covariance, data range 255,
    mean over the valid window positions and over channels; (B,) float64, equal to
    skimage.metrics.structural_similarity(gt, pred, data_range=255, channel_axis=-1)."""
    p, g = _pair(pred, gt)
    if min(p.shape[-2:]) < win_size:
        raise ValueError(f"SSIM needs images of at least {win_size} x {win_size}, got {tuple(p.shape[-2:])}")
    # skimage filters the whole image, then crops (win_size - 1) // 2 from each border before averaging: exactly the
    # positions where the window lies inside the image, i.e. an unpadded average pool. So border modes never matter.
    mean = lambda x: F.avg_pool2d(x, win_size, stride=1)  # noqa: E731  (B, 3, H-6, W-6)
    n = win_size * win_size
    cov_norm = n / (n - 1)  # sample covariance, skimage's use_sample_covariance=True
    ux, uy = mean(p), mean(g)
    vx = cov_norm * (mean(p * p) - ux * ux)
    vy = cov_norm * (mean(g * g) - uy * uy)
    vxy = cov_norm * (mean(p * g) - ux * uy)
    c1, c2 = (k1 * 255) ** 2, (k2 * 255) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.flatten(1).mean(dim=1)  # every channel has the same number of positions: mean of channel means


# -----------------------------------------------------------------------------
# weights files


def load_state_dict_file(path: str | os.PathLike, what: str) -> dict[str, torch.Tensor]:
    """Read a state dict from .safetensors, or from a PyTorch pickle with torch.load(weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: {what} weights file not found (nothing is downloaded; pass a local file)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except Exception as err:  # noqa: BLE001 - safetensors raises several types for damaged files
            raise WeightsError(f"{path}: not a readable safetensors file: {error_line(err)}") from None
    try:
        # weights_only=True: the unpickler only rebuilds tensors and plain containers, never arbitrary objects
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - UnpicklingError, RuntimeError, EOFError, ... for bad files
        raise WeightsError(f"{path}: cannot read as plain-tensor weights (torch.load weights_only=True): "
                           f"{error_line(err)}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
    return dict(state)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file (recorded with results, so a FID states exactly which weights produced it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -----------------------------------------------------------------------------
# FID feature extractors: uint8 (B, 3, H, W) -> float64 (B, D)


class FidelityInception(nn.Module):
    """torch-fidelity's InceptionV3 ('2048' pool features) with the FID weights, as torchmetrics uses it."""

    num_features = 2048

    def __init__(self, state_dict: dict[str, torch.Tensor]):
        super().__init__()
        from torchmetrics.image.fid import NoTrainInceptionV3

        # torch-fidelity reads its weights with torch.load(weights_only=False), i.e. it would unpickle whatever the
        # file holds. It never sees the user's file: we hand it an in-memory copy that we serialised ourselves from
        # the plain tensors read safely above. antialias=False keeps torch-fidelity's TF1-compatible resize (standard
        # FID); torchmetrics' default (antialias=True) departs from it.
        buffer = io.BytesIO()
        torch.save(state_dict, buffer)
        buffer.seek(0)
        self.inception = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                            feature_extractor_weights_path=buffer, antialias=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.inception(as_uint8_batch(images)).double()  # (B, 2048)


_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class TorchvisionInception(nn.Module):
    """torchvision's Inception-v3 pool features with CT2's `INCEPTION_V3_FID` preprocessing (used by DDColor too)."""

    num_features = 2048

    def __init__(self, state_dict: dict[str, torch.Tensor]):
        super().__init__()
        from torchvision.models import inception_v3

        aux = any(k.startswith("AuxLogits.") for k in state_dict)  # older files carry the aux head, some do not
        net = inception_v3(weights=None, aux_logits=aux, init_weights=False)
        net.load_state_dict(state_dict)
        self.blocks = nn.Sequential(
            net.Conv2d_1a_3x3, net.Conv2d_2a_3x3, net.Conv2d_2b_3x3, net.maxpool1,
            net.Conv2d_3b_1x1, net.Conv2d_4a_3x3, net.maxpool2,
            net.Mixed_5b, net.Mixed_5c, net.Mixed_5d, net.Mixed_6a, net.Mixed_6b, net.Mixed_6c, net.Mixed_6d,
            net.Mixed_6e, net.Mixed_7a, net.Mixed_7b, net.Mixed_7c, net.avgpool,
        ).eval().requires_grad_(False)

    def train(self, mode: bool = True):
        return super().train(False)  # batch norm must keep its running statistics

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.preprocess(images)).flatten(1).double()  # (B, 2048)

    @staticmethod
    def preprocess(images) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> the float (B, 3, 299, 299) that CT2 feeds the network."""
        x = as_uint8_batch(images).contiguous().float() / 255  # ToTensor (contiguous: conv kernels follow layout)
        x = (x - 0.5) / 0.5  # CT2's Normalize((0.5,) * 3, (0.5,) * 3): [-1, 1]
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)  # (B, 3, 299, 299)
        x = x * 0.5 + 0.5
        # CT2 then applies torchvision's transform_input formula, meant to turn ImageNet-normalised input into the
        # [-1, 1] the TF-ported weights expect, to [0, 1] input. It is kept as is: the published numbers used it.
        # Channel by channel with Python scalars, as CT2 writes it, so the float32 rounding is the same too.
        return torch.stack([x[:, c] * (std / 0.5) + (mean - 0.5) / 0.5
                            for c, (mean, std) in enumerate(zip(_IMAGENET_MEAN, _IMAGENET_STD, strict=True))], dim=1)


def load_fidelity_inception(path: str | os.PathLike) -> FidelityInception:
    """torch-fidelity's InceptionV3 from a local `weights-inception-2015-12-05-6726825d.pth` (or .safetensors)."""
    state = load_state_dict_file(path, "torch-fidelity InceptionV3")
    try:
        return FidelityInception(state)
    except RuntimeError as err:  # load_state_dict: missing / unexpected keys, size mismatches
        raise WeightsError(f"{path}: not torch-fidelity InceptionV3 (FID) weights: {_state_dict_error(err)}") from None


def load_torchvision_inception(path: str | os.PathLike) -> TorchvisionInception:
    """torchvision's Inception-v3 from a local `inception_v3_google-*.pth` (or .safetensors)."""
    state = load_state_dict_file(path, "torchvision Inception-v3")
    try:
        return TorchvisionInception(state)
    except RuntimeError as err:
        raise WeightsError(f"{path}: not torchvision Inception-v3 weights: {_state_dict_error(err)}") from None


def _state_dict_error(err: RuntimeError) -> str:
    """load_state_dict's multi-line message as one short line."""
    lines = [" ".join(line.split()) for line in str(err).splitlines()[1:] if line.strip()]
    text = "; ".join(lines) or error_line(err)
    return text if len(text) <= 300 else text[:297] + "..."


# name -> loader(weights path) -> module mapping uint8 (B, 3, H, W) to float64 (B, D); tests register tiny ones
FID_VARIANTS: dict[str, Callable[[str], nn.Module]] = {
    "fidelity": load_fidelity_inception,
    "torchvision": load_torchvision_inception,
}


def load_fid_extractor(variant: str, weights: str | os.PathLike | None) -> nn.Module:
    """The FID feature extractor `variant` (a FID_VARIANTS name) with weights from a local file."""
    if variant not in FID_VARIANTS:
        raise ValueError(f"unknown FID variant {variant!r}; choose from {', '.join(FID_VARIANTS)}")
    if weights is None:
        hint = {"fidelity": "torch-fidelity's weights-inception-2015-12-05-6726825d.pth",
                "torchvision": "torchvision's inception_v3_google-0cc3c7bd.pth"}.get(variant, "a weights file")
        raise WeightsError(f"FID needs local Inception weights: pass --fid-weights FILE ({hint}); "
                           "nothing is downloaded")
    return FID_VARIANTS[variant](str(weights))


# -----------------------------------------------------------------------------
# FID


class FIDAccumulator:
    """Fréchet Inception Distance (Heusel et al. 2017), d² = |μ_p − μ_g|² + Tr(Σ_p + Σ_g − 2(Σ_p Σ_g)^½), accumulated
    batch by batch through torchmetrics' FrechetInceptionDistance (float64 sums) with any feature extractor.

    Under torch.distributed (an initialised process group) each process adds its own images and compute() sums the
    feature sums, covariance sums and counts of all processes (torchmetrics' sync, an all-gather): the FID is over
    every process's images, and every process must call compute()."""

    def __init__(self, extractor: nn.Module, device: str | torch.device = "cpu"):
        from torchmetrics.image.fid import FrechetInceptionDistance

        extractor = extractor.eval()
        if not hasattr(extractor, "num_features"):  # torchmetrics would otherwise probe it with a random 299 image
            with torch.no_grad():
                extractor.num_features = int(extractor(torch.zeros(1, 3, 16, 16, dtype=torch.uint8)).shape[-1])
        # sync_on_compute=False: compute() syncs explicitly, so the image counts it checks are those of all processes
        self.metric = FrechetInceptionDistance(feature=extractor, normalize=False, sync_on_compute=False).to(device)
        self.device = torch.device(device)

    def update(self, pred, gt) -> None:
        """Add a batch of predictions (fake) and their ground truths (real), 8-bit RGB."""
        self.update_set(pred, real=False)
        self.update_set(gt, real=True)

    @torch.no_grad()
    def update_set(self, images, real: bool) -> None:
        self.metric.update(as_uint8_batch(images).to(self.device), real=real)

    def compute(self) -> float:
        # sums every state over the processes when torch.distributed is initialised (a collective), else a no-op;
        # the local states are restored afterwards
        if not hasattr(self.metric, "orig_dtype"):  # set by torchmetrics' update(): a process given no images has none
            self.metric.orig_dtype = torch.float64
        with self.metric.sync_context():
            n = min(int(self.metric.fake_features_num_samples), int(self.metric.real_features_num_samples))
            value = float(self.metric.compute()) if n >= 2 else None
        if value is None:  # the same totals on every process, so all of them raise
            raise ValueError(f"FID needs at least 2 images per set, got {n}")
        return value


def fid(pred, gt, extractor: nn.Module, batch_size: int = 50, device: str | torch.device = "cpu") -> float:
    """FID between two sets of 8-bit RGB images (B, 3, H, W) under `extractor`; see FIDAccumulator."""
    p, g = as_uint8_batch(pred), as_uint8_batch(gt)
    acc = FIDAccumulator(extractor, device)
    for i in range(0, len(p), batch_size):
        acc.update_set(p[i : i + batch_size], real=False)
    for i in range(0, len(g), batch_size):
        acc.update_set(g[i : i + batch_size], real=True)
    return acc.compute()


# -----------------------------------------------------------------------------
# LPIPS


class LPIPS(nn.Module):
    """LPIPS (Zhang et al. 2018) from the `lpips` package; its torchvision AlexNet/VGG16 backbone from a local file."""

    def __init__(self, net: str, backbone_state: dict[str, torch.Tensor], path: str = "backbone"):
        super().__init__()
        import lpips

        if net not in ("alex", "vgg"):
            raise ValueError(f"unknown LPIPS network {net!r}; choose alex or vgg")
        # pnet_rand=True: build the backbone without torchvision's download; its weights come from backbone_state.
        # The linear heads ship inside the lpips package (lpips/weights/v0.1/{net}.pth) and load from there.
        with warnings.catch_warnings():  # lpips still passes torchvision's deprecated `pretrained=` argument
            warnings.simplefilter("ignore", UserWarning)
            self.model = lpips.LPIPS(net=net, pnet_rand=True, verbose=False).eval().requires_grad_(False)
        # torchvision names features.{i}.*; lpips keeps the same modules as net.slice{k}.{i}.*
        targets = {k: "features." + k.split(".", 1)[1] for k in self.model.net.state_dict()}  # slice1.0.weight
        state = {k if k.startswith("features.") else f"features.{k}": v for k, v in backbone_state.items()}
        missing = [t for t in targets.values() if t not in state]
        if missing:
            raise WeightsError(f"{path}: not torchvision {net} weights (missing keys: {', '.join(missing[:3])})")
        self.model.net.load_state_dict({k: state[t] for k, t in targets.items()})

    @torch.no_grad()
    def forward(self, pred, gt) -> torch.Tensor:
        p, g = as_uint8_batch(pred), as_uint8_batch(gt)
        device = next(self.model.parameters()).device
        p, g = p.to(device).float() / 255, g.to(device).float() / 255
        return self.model(p, g, normalize=True).flatten().double()  # (B,); normalize: [0, 1] -> [-1, 1]


def load_lpips(net: str, weights: str | os.PathLike | None) -> LPIPS:
    """LPIPS with the torchvision backbone read from a local file (alexnet-owt-7be5be79.pth / vgg16-397923af.pth)."""
    if weights is None:
        raise WeightsError(f"LPIPS needs the torchvision {net} backbone weights: pass lpips_weights=FILE "
                           "(alexnet-owt-7be5be79.pth or vgg16-397923af.pth); nothing is downloaded")
    return LPIPS(net, load_state_dict_file(weights, f"torchvision {net}"), str(weights))
