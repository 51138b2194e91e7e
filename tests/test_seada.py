"""SeAda (paper 001) with tiny random models: adapter arithmetic (Eq.3), zero-initialised control and RCA, the
pipeline and CLI, and the staged training (what trains in each stage, what the mapper sees, launch, resume)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from colordiff.models.control import SeAdaControlModel
from colordiff.models.semantic_adapter import SemanticAdapter, SemanticAdapterOutput, reconstruction_loss
from colordiff.pipelines import load_pipeline
from colordiff.pipelines.seada_pipeline import SeAdaPipeline
from colordiff.testing import tiny_seada_pipeline, tiny_text_encoder, tiny_unet, write_captioned_images

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """Two small colorful images and their caption cache (Des_g, Des_c), as scripts/caption.py writes it."""
    return write_captioned_images(tmp_path_factory.mktemp("seada_data"), 2, 48, 64,
                                  color_caption="a red and green photo {i}", captioner="manual:test")


# -- models ---------------------------------------------------------------------------------------------------------
def test_adapter_eq3_matches_a_hand_computation():
    adapter = SemanticAdapter.from_text_encoder(tiny_text_encoder(), alpha=2.0, mlp_ratio=1.0)
    length, dim = adapter.trainable_embedding.shape
    assert (length, dim) == (77, 32)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        adapter.trainable_embedding.copy_(torch.randn(length, dim, generator=g))
        for p in adapter.mlp.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    e_g = torch.randn(2, length, dim, generator=g)
    e_r = adapter.refine(e_g).detach().double().numpy()

    e_t, x = adapter.trainable_embedding.detach().double().numpy(), e_g.double().numpy()
    w1, b1 = adapter.mlp.fc1.weight.detach().double().numpy(), adapter.mlp.fc1.bias.detach().double().numpy()
    w2, b2 = adapter.mlp.fc2.weight.detach().double().numpy(), adapter.mlp.fc2.bias.detach().double().numpy()
    for b in range(2):
        for i in (0, 5, 76):
            scores = np.array([sum(e_t[i, k] * x[b, j, k] for k in range(dim)) / 2.0 for j in range(length)])
            weights = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
            h = weights @ x[b] + x[b, i]  # softmax(e_t e_g^T / alpha) e_g + e_g, row i
            hidden = w1 @ h + b1
            gelu = 0.5 * hidden * (1 + np.vectorize(math.erf)(hidden / math.sqrt(2)))
            np.testing.assert_allclose(e_r[b, i], h + w2 @ gelu + b2, rtol=1e-4, atol=1e-5)

    ids = torch.randint(0, 100, (2, 77), generator=g)
    out = adapter(ids, ids.flip(0))
    assert out.e_r.shape == out.e_g.shape == out.e_c.shape == (2, 77, 32)
    assert torch.equal(out.e_g, tiny_text_encoder()(ids)[0])  # part (a) starts as SD's text encoder
    assert not any(p.requires_grad for p in adapter.color_encoder.parameters())  # part (b) is frozen
    expected = ((out.e_c - out.e_g) ** 2).mean()
    assert torch.allclose(reconstruction_loss(out), expected) and reconstruction_loss(out) > 0
    assert torch.allclose(reconstruction_loss(out, "e_r"), ((out.e_c - out.e_r) ** 2).mean())
    with pytest.raises(ValueError, match="needs the color-caption"):
        reconstruction_loss(SemanticAdapterOutput(e_r=out.e_r, e_g=out.e_g))


def test_adapter_parts_switch_off_and_round_trip(tmp_path):
    only_a = SemanticAdapter.from_text_encoder(tiny_text_encoder(), use_color_encoder=False,
                                               use_trainable_embedding=False)
    e_g = torch.randn(1, 77, 32)
    assert torch.equal(only_a.refine(e_g), e_g)  # no part (c), MLP starts as the identity: e_r = e_g
    with pytest.raises(ValueError, match="part \\(b\\) is switched off"):
        only_a.encode_color(torch.zeros(1, 77, dtype=torch.long))
    full = SemanticAdapter.from_text_encoder(tiny_text_encoder())
    full.remove_trainable_embedding()
    full.save_pretrained(tmp_path / "a", safe_serialization=True)
    again = SemanticAdapter.from_pretrained(tmp_path / "a")
    assert again.trainable_embedding is None and again.color_encoder is not None
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in full.state_dict().items())


@pytest.mark.parametrize("use_rca", [True, False])
def test_untrained_control_and_rca_leave_the_unet_output_unchanged(use_rca, tmp_path):
    unet = tiny_unet()
    control = SeAdaControlModel.from_unet(unet, use_rca=use_rca, rca_head_dim=8)
    strides = [c.stride for c in (*control.mapper.downs, control.mapper.conv_out)]
    assert strides == [(2, 2)] * 3 + [(1, 1)] and all(c.kernel_size == (4, 4) for c in control.mapper.downs)
    assert control.controlnet.conv_in.in_channels == 4 + 4  # concat(z_t, c_f)
    g = torch.Generator().manual_seed(1)
    z, e = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 32, generator=g)
    image, t = torch.rand(2, 3, 64, 64, generator=g), torch.tensor([10, 900])
    with torch.no_grad():
        reference = unet(z, t, e).sample
        assert torch.equal(control(unet, z, t, e, image).sample, reference)  # bit-identical
        assert control.mapper(image).shape == (2, 4, 8, 8)  # 64 px -> the 8x8 latent grid
        if use_rca:  # the hooks really run: a non-zero RCA output projection changes the result
            control.rca[-1].attn.to_out[0].weight.fill_(0.01)
            assert not torch.allclose(control(unet, z, t, e, image).sample, reference)
            assert torch.equal(control(unet, z, t, e, image, use_rca=False).sample, reference)
            assert torch.equal(unet(z, t, e).sample, reference)  # the hooks were removed after the call
    control.save_pretrained(tmp_path / "c", safe_serialization=True)
    loaded = SeAdaControlModel.from_pretrained(tmp_path / "c")
    assert (loaded.rca is not None) == use_rca
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in control.state_dict().items())


# -- pipeline and CLI -----------------------------------------------------------------------------------------------
def test_pipeline_round_trip_luminance_and_one_batched_call_per_step(tmp_path):
    tiny_seada_pipeline().save_pretrained(tmp_path / "m", safe_serialization=True)
    pipe = load_pipeline(tmp_path / "m")
    assert isinstance(pipe, SeAdaPipeline)
    calls = []
    pipe.unet.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    rng = np.random.default_rng(0)
    images = [rng.random((40, 56, 3)).astype(np.float32), rng.random((40, 56, 3)).astype(np.float32)]
    out = pipe(images, prompt=["a red car", "a blue sky"], num_inference_steps=3, resolution=64, output_type="np",
               generator=[torch.Generator().manual_seed(i) for i in range(2)])
    assert calls == [4, 4, 4]  # both images and both CFG branches in one U-Net call per step
    from colordiff.color import rgb_to_lab

    for image, result in zip(images, out.images, strict=True):
        assert result.shape == (40, 56, 3)
        lab_in, lab_out = (rgb_to_lab(torch.from_numpy(x).permute(2, 0, 1)[None]) for x in (image, result))
        assert torch.allclose(lab_in[:, 0], lab_out[:, 0], atol=0.6)  # the input's L (8-bit rounding aside)
    again = pipe(images[:1], prompt="a red car", num_inference_steps=3, resolution=64, output_type="np",
                 generator=[torch.Generator().manual_seed(0)]).images[0]
    np.testing.assert_allclose(again, out.images[0], atol=1e-5)  # batch-independent
    with pytest.raises(ValueError, match="records no captioner"):  # asked for a caption the model cannot make
        pipe(images, priors="caption", num_inference_steps=1, resolution=64)


def test_cli_init_model_seada_and_colorize_a_folder(tmp_path, tiny_data):
    from colordiff.cli import main

    assert main(["init-model", str(tmp_path / "m"), "--tiny", "--method", "seada"]) == 0
    assert json.loads((tmp_path / "m" / "model_index.json").read_text())["_class_name"] == "SeAdaPipeline"
    assert main(["colorize", str(tiny_data), "-o", str(tmp_path / "out"), "--model", str(tmp_path / "m"),
                 "--steps", "2", "--resolution", "64"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["img0.png", "img1.png"]


# -- training -------------------------------------------------------------------------------------------------------
def _train_in_process(stage: int, source: Path, out: Path, data: Path, **overrides) -> Path:
    from accelerate.state import AcceleratorState, GradientState

    from colordiff.config import load_config
    from colordiff.training.seada import TrainSeAdaConfig, main

    overrides = {"pretrained_model_name_or_path": str(source), "output_dir": str(out), "max_train_steps": 2,
                 "validation_images": [], "caption_file": str(data / "captions.jsonl"), "train_data_dir": str(data),
                 **overrides}
    config = load_config(TrainSeAdaConfig, [REPO / "configs" / "tiny" / f"seada_stage{stage}.yaml"],
                         [f"{k}={v}" for k, v in overrides.items()])
    try:
        return main(config)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def _groups(model: Path) -> dict[str, dict[str, torch.Tensor]]:
    weights = {part: load_file(model / part / "diffusion_pytorch_model.safetensors")
               for part in ("unet", "vae", "adapter", "control")}
    adapter, control = weights.pop("adapter"), weights.pop("control")
    weights["adapter_a"] = {k: v for k, v in adapter.items() if k.startswith("gray_encoder.")}
    weights["adapter_b"] = {k: v for k, v in adapter.items() if k.startswith("color_encoder.")}
    weights["adapter_c"] = {k: v for k, v in adapter.items() if k.startswith(("trainable_embedding", "mlp."))}
    weights["controlnet"] = {k: v for k, v in control.items() if k.startswith(("controlnet.", "mapper."))}
    weights["rca"] = {k: v for k, v in control.items() if k.startswith("rca.")}
    return weights


def test_each_stage_trains_exactly_its_parts_and_feeds_the_mapper_its_image(tmp_path, tiny_data, monkeypatch,
                                                                             fresh_accelerate):
    from colordiff.models.control import ConditionalMapper

    seen = []
    original = ConditionalMapper.forward

    def recording(self, image):
        if torch.is_grad_enabled():  # training steps, not validation
            seen.append(image.detach().clone())
        return original(self, image)

    monkeypatch.setattr(ConditionalMapper, "forward", recording)
    tiny_seada_pipeline().save_pretrained(tmp_path / "init", safe_serialization=True)
    trains = {0: {"controlnet"}, 1: {"adapter_a", "adapter_c"}, 2: {"controlnet", "rca"},
              3: {"adapter_a", "adapter_c", "controlnet", "rca"}}
    source = tmp_path / "init"
    for stage in range(4):
        seen.clear()
        model = _train_in_process(stage, source, tmp_path / f"stage{stage}", tiny_data, train_batch_size=1)
        before, after = _groups(source), _groups(model)
        for group, weights in before.items():
            changed = [k for k, v in weights.items() if not torch.equal(after[group][k], v)]
            if group in trains[stage]:
                assert changed, (stage, group)
            else:
                assert not changed, (stage, group, changed[:3])
        assert len(seen) == 2
        gray = all(torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2]) for x in seen)
        assert gray == (stage != 1), stage  # stage I: the real color image; the others: the gray image
        assert all(x.min() >= 0 and x.max() <= 1 for x in seen)
        source = model
    log = [json.loads(x) for x in (tmp_path / "stage1" / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(math.isfinite(r["loss"]) for r in log)


def test_stage0_builds_seada_from_a_stable_diffusion_folder(tmp_path, tiny_data, fresh_accelerate):
    from colordiff.testing import save_tiny_stable_diffusion, tiny_stable_diffusion

    sd = save_tiny_stable_diffusion(tmp_path / "sd")
    model = _train_in_process(0, sd, tmp_path / "out", tiny_data, max_train_steps=1)
    pipe = load_pipeline(model)
    assert isinstance(pipe, SeAdaPipeline) and pipe.control.rca is not None
    reference = tiny_stable_diffusion()
    assert all(torch.equal(pipe.unet.state_dict()[k], v) for k, v in reference.unet.state_dict().items())
    text = reference.text_encoder.state_dict()
    assert all(torch.equal(pipe.adapter.gray_encoder.state_dict()[k], v) for k, v in text.items())


def test_later_stage_without_its_input_is_a_clear_error(tmp_path, tiny_data, fresh_accelerate):
    with pytest.raises(FileNotFoundError, match=r"stage II starts from the stage I model folder, which is missing"):
        _train_in_process(2, tmp_path / "nope" / "model", tmp_path / "out", tiny_data)


def _launch(recipe: str, overrides: list[str]) -> None:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--num_processes", "1", str(REPO / "scripts" / "train_seada.py"), "--config",
           str(REPO / "configs" / "tiny" / recipe), *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.mark.slow
def test_tiny_stages_launch_in_a_chain_resume_exactly_and_colorize(tmp_path, tiny_data):
    from colordiff.cli import main

    assert main(["init-model", str(tmp_path / "tiny"), "--tiny", "--method", "seada"]) == 0
    source, data = tmp_path / "tiny", [f"train_data_dir={tiny_data}", f"caption_file={tiny_data / 'captions.jsonl'}"]
    for stage in range(4):
        out = tmp_path / f"stage{stage}"
        _launch(f"seada_stage{stage}.yaml", [f"pretrained_model_name_or_path={source}", f"output_dir={out}", *data,
                                             f"validation_images=[{tiny_data / 'img0.png'}]"])
        assert (out / "validation" / "step-0000004.png").is_file()
        source = out / "model"
        assert isinstance(load_pipeline(source), SeAdaPipeline)  # loads, so the next stage can start from it

    resumed = tmp_path / "resumed"
    common = [f"pretrained_model_name_or_path={tmp_path / 'stage2' / 'model'}", f"output_dir={resumed}",
              "validation_images=[]", *data]
    _launch("seada_stage3.yaml", [*common, "max_train_steps=2"])  # "killed" after step 2
    _launch("seada_stage3.yaml", common)  # resume_from_checkpoint: latest -> steps 3-4
    for part in ("adapter", "control"):
        a = load_file(resumed / "model" / part / "diffusion_pytorch_model.safetensors")
        b = load_file(tmp_path / "stage3" / "model" / part / "diffusion_pytorch_model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
    losses = [(tmp_path / d / "train_log.jsonl").read_text() for d in ("stage3", "resumed")]
    assert losses[0] == losses[1]

    assert main(["colorize", str(tiny_data), "-o", str(tmp_path / "colorized"), "--model", str(source), "--steps",
                 "2", "--resolution", "64", "--prompt", "a photo"]) == 0
    assert len(list((tmp_path / "colorized").iterdir())) == 2


def test_benchmark_times_inference_and_every_stage_against_controlnet():
    from colordiff.training.seada_bench import SeAdaBenchConfig, run

    result = run(SeAdaBenchConfig(warmup=0, repeats=1, steps=1, batch_size=1))
    inference, training = result["inference"], result["training"]
    assert inference["ratio"] == pytest.approx(inference["seada_s_per_image"] / inference["controlnet_s_per_image"])
    for stage in range(4):
        rate = training[f"stage{stage}_images_per_s"]
        assert 0 < rate < float("inf")
        ratio = training[f"stage{stage}_ratio_vs_controlnet"]
        assert ratio == pytest.approx(training["controlnet_images_per_s"] / rate)
