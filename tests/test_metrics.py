"""Metric functions against hand computation, scikit-image, SciPy and the reference feature extractors."""

import math
import pickle

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from colordiff import metrics as M

# -----------------------------------------------------------------------------
# a tiny FID feature extractor with weights from a file (imported by the other evaluation tests too)


class TinyFeatures(nn.Module):
    """4x4 average colors projected to 8 features: a cheap stand-in for Inception in tests."""

    def __init__(self, proj: torch.Tensor):
        super().__init__()
        self.register_buffer("proj", proj.double())  # (8, 48)

    def forward(self, images):
        x = F.adaptive_avg_pool2d(M.as_uint8_batch(images).double() / 255, 4).flatten(1)  # (B, 48)
        return torch.tanh(4 * (x - 0.5) @ self.proj.T)  # (B, 8)


def load_tiny_features(path) -> TinyFeatures:
    return TinyFeatures(M.load_state_dict_file(path, "tiny")["proj"])


def write_tiny_weights(path, seed: int = 0):
    save_file({"proj": torch.randn(8, 48, generator=torch.Generator().manual_seed(seed))}, str(path))
    return path


def _random_images(n, h, w, seed):
    return (np.random.default_rng(seed).random((n, h, w, 3)) * 255).astype(np.uint8)  # (B, H, W, 3)


# -----------------------------------------------------------------------------
# colorfulness, ΔCF, PSNR, SSIM


def test_colorfulness_hand_computed():
    half = np.zeros((4, 6, 3), np.uint8)
    half[:, :3] = (255, 0, 0)  # red: rg = 255, yb = 127.5
    half[:, 3:] = (0, 0, 255)  # blue: rg = 0, yb = -255
    # hasler (signed): mu_rg = 127.5, sd_rg = 127.5; mu_yb = -63.75, sd_yb = 191.25
    hasler = math.sqrt(127.5**2 + 191.25**2) + 0.3 * math.sqrt(127.5**2 + 63.75**2)
    # abs: |yb| is 127.5 / 255: mu_yb = 191.25, sd_yb = 63.75 (rg is unchanged)
    absolute = math.sqrt(127.5**2 + 63.75**2) + 0.3 * math.sqrt(127.5**2 + 191.25**2)
    assert M.colorfulness(half, "hasler").item() == pytest.approx(hasler, rel=1e-12)
    assert M.colorfulness(half, "abs").item() == pytest.approx(absolute, rel=1e-12)
    assert M.colorfulness(half).item() == M.colorfulness(half, "abs").item()  # abs is the default (CT2 / DDColor)

    gray = np.full((5, 7, 3), 77, np.uint8)
    assert M.colorfulness(gray, "hasler").item() == 0.0 and M.colorfulness(gray, "abs").item() == 0.0
    flat = np.zeros((3, 3, 3), np.uint8)
    flat[...] = (200, 100, 50)  # one color: sigma = 0, mean term only; rg = 100, yb = 100
    assert M.colorfulness(flat, "hasler").item() == pytest.approx(0.3 * math.sqrt(100**2 + 100**2), rel=1e-12)


def test_colorfulness_matches_the_ct2_loop_and_takes_arrays_or_tensors():
    images = _random_images(3, 20, 30, seed=1)

    def ct2(img):  # CT2's image_colorfulness, on RGB instead of cv2's BGR split
        R, G, B = (img[..., c].astype(float) for c in range(3))
        rg, yb = np.absolute(R - G), np.absolute(0.5 * (R + G) - B)
        return np.sqrt(np.std(rg) ** 2 + np.std(yb) ** 2) + 0.3 * np.sqrt(np.mean(rg) ** 2 + np.mean(yb) ** 2)

    expected = [ct2(img) for img in images]
    np.testing.assert_allclose(M.colorfulness(images).numpy(), expected, rtol=1e-12)
    as_tensor = torch.from_numpy(images).permute(0, 3, 1, 2)  # (B, 3, H, W)
    np.testing.assert_array_equal(M.colorfulness(as_tensor).numpy(), M.colorfulness(images).numpy())
    assert M.colorfulness(images[0]).shape == (1,)
    with pytest.raises(TypeError, match="uint8"):
        M.colorfulness(images.astype(np.float32) / 255)
    with pytest.raises(ValueError, match="variant"):
        M.colorfulness(images, "rgb")


def test_delta_cf_is_the_gap_between_set_means():
    assert M.delta_cf([10.0, 20.0], [40.0, 30.0, 50.0]) == pytest.approx(25.0)
    assert M.delta_cf([1.0], [1.0]) == 0.0


def test_delta_cf_per_image_is_the_mean_of_per_image_gaps():
    # one prediction 10 more colorful than its ground truth, one 6 less: the set means differ by 2, the images by 8
    pred, gt = [30.0, 14.0], [20.0, 20.0]
    assert M.delta_cf(pred, gt) == pytest.approx(2.0, rel=1e-15)
    assert M.delta_cf_per_image(pred, gt) == pytest.approx(8.0, rel=1e-15)
    assert M.delta_cf_per_image(torch.tensor(pred, dtype=torch.float64), np.array(gt)) == pytest.approx(8.0)
    with pytest.raises(ValueError, match="must pair image by image"):
        M.delta_cf_per_image([1.0, 2.0], [1.0, 2.0, 3.0])


def test_psnr_and_ssim_equal_scikit_image():
    gt = _random_images(3, 33, 45, seed=2)
    noise = np.random.default_rng(3).integers(-40, 41, gt.shape)
    pred = np.clip(gt.astype(int) + noise, 0, 255).astype(np.uint8)
    pred[1] = gt[1] // 2 + 60  # a structurally different one
    psnr, ssim = M.psnr(pred, gt).numpy(), M.ssim(pred, gt).numpy()
    for i in range(len(gt)):
        assert psnr[i] == pytest.approx(peak_signal_noise_ratio(gt[i], pred[i], data_range=255), rel=1e-12)
        assert ssim[i] == pytest.approx(structural_similarity(gt[i], pred[i], data_range=255, channel_axis=-1),
                                        rel=1e-10)
    assert math.isinf(M.psnr(gt, gt)[0].item()) and M.ssim(gt, gt)[0].item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same shape"):
        M.psnr(gt[:, :32], gt)


# -----------------------------------------------------------------------------
# FID


def _scipy_fid(f1: np.ndarray, f2: np.ndarray) -> float:
    """The Fréchet distance as pytorch-fid / CT2 compute it (np.cov, scipy.linalg.sqrtm)."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_fid_equals_scipy_frechet_distance_and_is_zero_for_a_set_with_itself(tmp_path):
    extractor = load_tiny_features(write_tiny_weights(tmp_path / "tiny.safetensors"))
    a = torch.from_numpy(_random_images(30, 24, 24, seed=4)).permute(0, 3, 1, 2)
    b = (a.double() * 0.7 + 40).round().byte()  # a shifted, less contrasted set
    with torch.no_grad():
        fa, fb = extractor(a).numpy(), extractor(b).numpy()
    expected = _scipy_fid(fb, fa)
    assert expected > 0.1
    assert M.fid(b, a, extractor) == pytest.approx(expected, rel=1e-6)
    assert M.fid(b, a, extractor, batch_size=7) == pytest.approx(expected, rel=1e-6)  # batching does not matter
    assert abs(M.fid(a, a, extractor)) < 1e-8
    acc = M.FIDAccumulator(extractor)
    acc.update(b[:1], a[:1])
    with pytest.raises(ValueError, match="at least 2"):
        acc.compute()


def _random_fidelity_state() -> dict:
    """Random weights with torch-fidelity InceptionV3's keys and shapes (its __init__ would download otherwise)."""
    from unittest import mock

    from torch_fidelity import feature_extractor_inceptionv3 as fe

    with torch.device("meta"), mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: {}), \
            mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None):
        shell = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])  # shapes only, no memory
    g = torch.Generator().manual_seed(0)
    state = {}
    for key, meta in shell.state_dict().items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.zeros((), dtype=torch.long)
        elif meta.dim() > 1:  # conv / linear: He-scaled, so activations neither vanish nor explode
            state[key] = torch.randn(meta.shape, generator=g) * math.sqrt(2 / meta[0].numel())
        elif key.endswith(("running_var", "weight")):  # non-trivial batch-norm parameters and statistics
            state[key] = torch.rand(meta.shape, generator=g) + 0.5
        else:
            state[key] = torch.randn(meta.shape, generator=g) * 0.1
    return state


def test_fidelity_inception_loads_local_weights_safely_and_equals_torch_fidelity(tmp_path):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    state = _random_fidelity_state()
    pth, st = tmp_path / "weights-inception.pth", tmp_path / "weights-inception.safetensors"
    torch.save(state, pth)
    save_file(state, str(st))
    image = torch.from_numpy(_random_images(1, 40, 56, seed=5)).permute(0, 3, 1, 2)
    reference = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(pth))
    ours = M.load_fid_extractor("fidelity", pth)
    # Both resize to INPUT_IMAGE_SIZE (299) first; 107 keeps the test cheap on a CPU and still tells torch-fidelity's
    # TF1-compatible resize apart from torchmetrics' default antialiased one.
    reference.INPUT_IMAGE_SIZE = ours.inception.INPUT_IMAGE_SIZE = 107
    with torch.no_grad():
        expected = reference(image)[0].double()  # (1, 2048)
        features = ours(image)
    assert expected.shape == (1, 2048) and expected.std() > 0
    torch.testing.assert_close(features, expected, rtol=0, atol=0)
    # a .safetensors file reads to the same tensors (the module built from them is the one tested above)
    loaded = M.load_state_dict_file(st, "torch-fidelity InceptionV3")
    assert loaded.keys() == state.keys() and all(torch.equal(v, state[k]) for k, v in loaded.items())


class _Exploit:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))  # would create a file when unpickled


def test_weights_errors_are_clear_and_pickles_are_never_trusted(tmp_path):
    with pytest.raises(M.WeightsError, match="--fid-weights"):
        M.load_fid_extractor("fidelity", None)
    missing = tmp_path / "nope.pth"
    with pytest.raises(M.WeightsError, match=f"{missing}: .*not found"):
        M.load_fid_extractor("torchvision", missing)
    with pytest.raises(ValueError, match="unknown FID variant"):
        M.load_fid_extractor("inception-v4", missing)

    evil, target = tmp_path / "evil.pth", tmp_path / "pwned"
    with open(evil, "wb") as fh:
        pickle.dump({"x": _Exploit(str(target))}, fh, protocol=2)
    with pytest.raises(M.WeightsError, match="weights_only=True"):
        M.load_fid_extractor("fidelity", evil)
    assert not target.exists()

    wrong = tmp_path / "wrong.safetensors"
    save_file({"conv.weight": torch.zeros(2, 2)}, str(wrong))
    with pytest.raises(M.WeightsError, match=r"not torch-fidelity InceptionV3 \(FID\) weights: .*Missing key"):
        M.load_fid_extractor("fidelity", wrong)
    with pytest.raises(M.WeightsError, match="not torchvision Inception-v3 weights"):
        M.load_fid_extractor("torchvision", wrong)
    with pytest.raises(M.WeightsError, match="lpips_weights"):
        M.load_lpips("vgg", None)


def test_torchvision_inception_reproduces_the_ct2_feature_pipeline(tmp_path):
    from torchvision.models import inception_v3

    torch.manual_seed(1)
    net = inception_v3(weights=None, aux_logits=True, init_weights=False).eval()
    path = tmp_path / "inception_v3_google.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    ours = M.load_fid_extractor("torchvision", path)
    images = _random_images(2, 48, 64, seed=6)

    # CT2's calculate_fid: ToTensor, Normalize(0.5, 0.5), bilinear resize to 299, then INCEPTION_V3_FID's x*0.5+0.5
    # and transform_input arithmetic
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().float() / 255  # ToTensor
    x = F.interpolate((x - 0.5) / 0.5, size=(299, 299), mode="bilinear").clone() * 0.5 + 0.5
    for c, (mean, std) in enumerate(zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), strict=True)):
        x[:, c] = x[:, c] * (std / 0.5) + (mean - 0.5) / 0.5
    torch.testing.assert_close(ours.preprocess(images), x, rtol=0, atol=0)

    # then the network up to its final average pool (captured with a hook on torchvision's own forward); the
    # layers are size-agnostic, so a 107 px input keeps this cheap on a CPU
    small = F.interpolate(x, size=(107, 107), mode="bilinear")
    pooled = {}
    net.avgpool.register_forward_hook(lambda module, inputs, output: pooled.setdefault("x", output))
    with torch.no_grad():
        net(small)
        features = ours.blocks(small).flatten(1).double()
    expected = pooled["x"].flatten(1).double()  # (2, 2048)
    assert expected.std() > 0
    torch.testing.assert_close(features, expected, rtol=0, atol=0)


# -----------------------------------------------------------------------------
# LPIPS


@pytest.mark.filterwarnings("ignore:.*(pretrained|weight enum).*:UserWarning")  # inside the lpips package
def test_lpips_uses_the_local_backbone_weights(tmp_path):
    import lpips

    torch.manual_seed(2)
    reference = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False).eval()  # a random AlexNet backbone
    # saved the way torchvision names it (features.{i}.*), as in alexnet-owt-7be5be79.pth
    backbone = {"features." + k.split(".", 1)[1]: v for k, v in reference.net.state_dict().items()}
    path = tmp_path / "alexnet.pth"
    torch.save(backbone, path)
    gt = _random_images(2, 64, 64, seed=7)
    pred = np.clip(gt.astype(int) + 30, 0, 255).astype(np.uint8)
    to_t = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255 * 2 - 1  # noqa: E731  [-1, 1]
    with torch.no_grad():
        expected = reference(to_t(pred), to_t(gt)).flatten().double()
    model = M.load_lpips("alex", path)  # a new random backbone, overwritten by the file's
    ours = model(pred, gt)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-7)
    assert (ours > 0).all() and model(gt, gt).abs().max() < 1e-6
