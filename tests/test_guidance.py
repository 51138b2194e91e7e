"""Segmentation guidance (paper 000, Eq.4-5): the composite, the step threshold, one batched U-Net call per step."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from colordiff.models import ConcatUNet2DConditionModel
from colordiff.pipelines import ColorDiffPipeline
from colordiff.sampling import (
    SegmentationGuidance,
    guided_noise_prediction,
    guided_step_count,
    masks_to_latent_grid,
    sample,
    segmentation_composite,
    segmentation_noise_prediction,
)
from colordiff.semantics import ImagePriors, Instances
from colordiff.testing import tiny_colordiff_pipeline, tiny_stable_diffusion


@pytest.fixture(scope="module")
def sd():
    return tiny_stable_diffusion()


@pytest.fixture(scope="module")
def unet(sd):
    unet = ConcatUNet2DConditionModel.from_unet(sd.unet).eval()
    with torch.no_grad():
        unet.condition_fuse.weight[:, 4:] = 0.3  # a "trained" model: the masked condition z_c * M^i matters
    return unet


def _encode(sd, prompts):
    ids = sd.tokenizer(prompts, padding="max_length", max_length=sd.tokenizer.model_max_length, truncation=True,
                       return_tensors="pt").input_ids
    with torch.no_grad():
        return sd.text_encoder(ids)[0]


class CountingUNet:
    """Records the batch size of every U-Net call."""

    def __init__(self, unet):
        self.unet, self.batches = unet, []

    def __call__(self, latents, t, text, condition_latents):
        self.batches.append(latents.shape[0])
        return self.unet(latents, t, text, condition_latents=condition_latents)


def _hand_made_masks():
    """Image 0: a top band and a left band (overlapping in the top-left corner); image 1: a one-cell-wide diagonal."""
    masks = torch.zeros(3, 1, 8, 8)
    masks[0, 0, :3, :] = 1
    masks[1, 0, :, :3] = 1
    masks[2, 0] = torch.eye(8)
    return masks, torch.tensor([0, 0, 1])


def _guidance(sd, strength=0.3, cfg=True):
    masks, owners = _hand_made_masks()
    labels = _encode(sd, ["a red car", "green grass", "a yellow kite"])
    return SegmentationGuidance(masks, owners, labels, _encode(sd, ["", "", ""]) if cfg else None, strength)


def test_composite_equals_the_formula_on_hand_made_masks():
    masks, owners = _hand_made_masks()
    gen = torch.Generator().manual_seed(0)
    base, inst = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(3, 4, 8, 8, generator=gen)
    out = segmentation_composite(base, inst, masks, owners)
    expected = base.clone()
    for b in range(2):  # the corrected Eq.5, written out cell by cell
        for y in range(8):
            for x in range(8):
                covering = [i for i in range(3) if owners[i] == b and masks[i, 0, y, x] > 0]
                if covering:
                    expected[b, :, y, x] = sum(inst[i, :, y, x] for i in covering) / len(covering)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    assert torch.equal(out[1, :, 0, 1], base[1, :, 0, 1])  # outside every mask: the image's own latent, exactly


def test_overlapping_masks_are_normalised_not_summed():
    masks, owners = _hand_made_masks()
    base = torch.full((2, 4, 8, 8), 10.0)
    inst = torch.stack([torch.full((4, 8, 8), 1.0), torch.full((4, 8, 8), 3.0), torch.full((4, 8, 8), 5.0)])
    out = segmentation_composite(base, inst, masks, owners)
    assert torch.all(out[0, :, :3, :3] == 2.0)  # overlap of instances 0 and 1: their mean
    assert torch.all(out[0, :, :3, 3:] == 1.0) and torch.all(out[0, :, 3:, :3] == 3.0)
    assert torch.all(out[0, :, 3:, 3:] == 10.0)  # outside the masks: the image's own latent
    assert torch.all(out[1].diagonal(dim1=-2, dim2=-1) == 5.0) and (out[1] == 10.0).sum() == 4 * (64 - 8)
    printed = sum(base[0] * (1 - masks[i]) + inst[i] * masks[i] for i in range(2))  # Eq.5 as printed, image 0
    assert printed[0, 0, 0] == 4.0 and printed[0, 7, 7] == 20.0  # sums: 1 + 3 in the overlap, k z outside


def test_guided_step_count_follows_the_threshold():
    assert guided_step_count(50, 0.3) == 15  # paper 000: T = 50, s = 0.3 (50 * 0.3 = 15.000000000000002 in floats)
    assert guided_step_count(4, 0.3) == 2  # t in {4, 3} > 4 * 0.7 = 2.8
    assert guided_step_count(10, 0.0) == 0 and guided_step_count(10, 1.0) == 10 and guided_step_count(20, 0.25) == 5
    with pytest.raises(ValueError, match="strength"):
        guided_step_count(10, 1.5)


def test_sampler_guides_the_first_steps_with_one_batched_call_each(sd, unet):
    noise, z_c = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    text, uncond = _encode(sd, ["a photo", "a street"]), _encode(sd, ["", ""])
    counting = CountingUNet(unet)
    with torch.no_grad():
        sample(counting, sd.scheduler, noise, z_c, text, uncond, num_inference_steps=5, guidance_scale=5.0,
                    segmentation=_guidance(sd, strength=0.3))
    # ceil(5 * 0.3) = 2 guided steps, each ONE call with both CFG branches of 2 images + 3 instances
    assert counting.batches == [2 * (2 + 3)] * 2 + [2 * 2] * 3


def test_zero_strength_is_exactly_the_unguided_sampler(sd, unet):
    noise, z_c = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    text, uncond = _encode(sd, ["a photo", "a street"]), _encode(sd, ["", ""])
    run = lambda seg: sample(unet, sd.scheduler, noise, z_c, text, uncond, num_inference_steps=4,  # noqa: E731
                             guidance_scale=5.0, segmentation=seg)
    with torch.no_grad():
        plain, off, on = run(None), run(_guidance(sd, strength=0.0)), run(_guidance(sd, strength=0.5))
    assert torch.equal(off, plain)
    assert (on - plain).abs().max() > 1e-3  # guidance does change the result when on


@pytest.mark.parametrize("cfg", [True, False])
def test_batched_step_equals_looped_calls(sd, unet, cfg):
    """The one-call noise composite, stepped once, equals Eq.4 evaluated instance by instance and branch by branch,
    each stepped, then composited as latents (Eq.5): a DDIM step is affine in the noise for a fixed z_t."""
    gen = torch.Generator().manual_seed(1)
    z, z_c = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)
    text = _encode(sd, ["a photo", "a street"])
    uncond = _encode(sd, ["", ""]) if cfg else None
    seg = _guidance(sd, cfg=cfg)
    ddim = DDIMScheduler.from_config(sd.scheduler.config)
    ddim.set_timesteps(10)
    t = ddim.timesteps[0]

    def one(latent, cond, emb, neg):  # a single-row CDM step: z_{t-1} = CDM(z_t, t, cond, emb)
        eps = guided_noise_prediction(unet, latent[None], t, cond[None], emb[None],
                                      None if neg is None else neg[None], 6.0)
        return ddim.step(eps, t, latent[None]).prev_sample[0]

    with torch.no_grad():
        eps = segmentation_noise_prediction(unet, t, z, z_c, text, uncond, 6.0, seg)
        batched = ddim.step(eps, t, z).prev_sample
        base = torch.stack([one(z[b], z_c[b], text[b], None if uncond is None else uncond[b]) for b in range(2)])
        inst = torch.stack([one(z[o], z_c[o] * seg.masks[i], seg.text_embeds[i],
                                None if seg.uncond_embeds is None else seg.uncond_embeds[i])
                            for i, o in enumerate(seg.owners.tolist())])  # Eq.4, one instance at a time
    looped = segmentation_composite(base, inst, seg.masks, seg.owners)
    torch.testing.assert_close(batched, looped, rtol=1e-4, atol=1e-5)  # batched vs single-row U-Net calls
    assert (batched - base).abs().max() > 1e-3


def test_noise_space_composite_equals_the_latent_composite_for_ddim():
    """Eq.5 on the noise predictions, stepped once, equals Eq.5 on each prediction's own DDIM step (eta 0): the
    step is z_t-affine in eps, and every instance starts from its image's z_t."""
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(2, 4, 8, 8, generator=gen)
    eps, eps_i = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(3, 4, 8, 8, generator=gen)
    masks = (torch.rand(3, 1, 8, 8, generator=gen) > 0.4).float()
    owners = torch.tensor([0, 0, 1])
    ddim = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                         set_alpha_to_one=False)
    ddim.set_timesteps(50)
    for t in ddim.timesteps[:15]:
        once = ddim.step(segmentation_composite(eps, eps_i, masks, owners), t, z).prev_sample
        each = segmentation_composite(ddim.step(eps, t, z).prev_sample, ddim.step(eps_i, t, z[owners]).prev_sample,
                                      masks, owners)
        torch.testing.assert_close(once, each, rtol=0, atol=1e-6)


def test_masks_to_latent_grid_keeps_thin_objects():
    masks = torch.zeros(4, 64, 64, dtype=torch.bool)
    masks[0, :, 10] = True  # a 1-pixel pole
    masks[1, 30, 30] = True  # a single pixel
    masks[2, 8:16, 16:24] = True  # exactly one latent cell
    grid = masks_to_latent_grid(masks, (8, 8))
    assert grid.shape == (4, 1, 8, 8) and set(grid.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(grid[0, 0, :, 1], torch.ones(8)) and grid[0].sum() == 8  # the pole survives, 1 cell wide
    assert grid[1, 0, 3, 3] == 1 and grid[1].sum() == 1
    assert grid[2, 0, 1, 2] == 1 and grid[2].sum() == 1  # aligned masks are not dilated
    assert grid[3].sum() == 0  # empty stays empty (the pipeline drops it)
    odd = masks_to_latent_grid(torch.ones(1, 37, 53, dtype=torch.bool), (5, 7))  # sizes that do not divide
    assert odd.shape == (1, 1, 5, 7) and odd.min() == 1


# -- in the pipeline ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pipe():
    pipe = tiny_colordiff_pipeline()
    with torch.no_grad():
        pipe.unet.condition_fuse.weight[:, 4:] = 0.3
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _image(seed=0, shape=(48, 80, 3)):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def _stripes(height, width, labels, empty=()):
    masks = torch.zeros(len(labels), height, width, dtype=torch.bool)
    for i in range(len(labels)):
        if i not in empty:
            masks[i, :, i * width // len(labels) : (i + 1) * width // len(labels)] = True
    return Instances(masks, list(labels), [0.9] * len(labels))


def _run(pipe, images, priors, **kwargs):
    gens = [torch.Generator().manual_seed(i) for i in range(len(images))]
    return pipe(images, generator=gens, num_inference_steps=4, resolution=64, output_type="np", priors=priors,
                **kwargs)


def test_pipeline_segmentation_priors_change_only_what_they_should(pipe):
    images = [_image(0), _image(1, (64, 64, 3))]
    plain = _run(pipe, images, "none").images
    instances = [ImagePriors(instances=_stripes(48, 80, ["a red car", "the sky"])), ImagePriors()]
    guided = _run(pipe, images, instances, seg_strength=0.5)
    assert np.abs(guided.images[0] - plain[0]).max() > 1e-3
    np.testing.assert_array_equal(guided.images[1], plain[1])  # no instances: the same batch result, exactly
    off = _run(pipe, images, instances, seg_strength=0.0).images
    for a, b in zip(off, plain, strict=True):
        np.testing.assert_array_equal(a, b)
    assert guided.priors[0].extra["prompt"] == "" and guided.priors[0].instances.labels == ["a red car", "the sky"]


def test_pipeline_drops_empty_masks(pipe):
    image = [_image(2)]
    one = _run(pipe, image, [ImagePriors(instances=_stripes(48, 80, ["a dog"]))]).images[0]
    with_empty = _run(pipe, image, [ImagePriors(instances=Instances(
        torch.stack([_stripes(48, 80, ["a dog"]).masks[0], torch.zeros(48, 80, dtype=torch.bool)]),
        ["a dog", "nothing"], [0.9, 0.8]))]).images[0]
    np.testing.assert_allclose(with_empty, one, atol=1e-6)


def test_pipeline_guided_result_is_batch_independent(pipe):
    images = [_image(3), _image(4)]
    priors = [ImagePriors(instances=_stripes(48, 80, ["a red car", "grass", "sky"])),
              ImagePriors(instances=_stripes(48, 80, ["a dog"]))]
    batch = _run(pipe, images, priors).images
    gens = [torch.Generator().manual_seed(1)]
    alone = pipe(images[1:], generator=gens, num_inference_steps=4, resolution=64, output_type="np",
                 priors=priors[1:]).images[0]
    np.testing.assert_allclose(batch[1], alone, atol=1e-5)


def test_pipeline_rejects_masks_of_the_wrong_size(pipe):
    with pytest.raises(ValueError, match=r"instance masks are \(10, 10\)"):
        _run(pipe, [_image(0)], [ImagePriors(instances=_stripes(10, 10, ["x"]))])
    with pytest.raises(ValueError, match="2 precomputed priors for 1 images"):
        _run(pipe, [_image(0)], [ImagePriors(), ImagePriors()])


def test_in_memory_pipeline_keeps_todays_behaviour(pipe):
    """No generators recorded: the default priors ("auto") are none, and asking for one names what is missing."""
    assert isinstance(pipe, ColorDiffPipeline) and pipe.prior_generators is None
    image = [_image(5)]
    default = _run(pipe, image, "auto")
    assert default.priors is None
    np.testing.assert_array_equal(default.images[0], _run(pipe, image, "none").images[0])
    with pytest.raises(ValueError, match=r"records no captioner \(needed for the caption prior\)"):
        _run(pipe, image, "caption")


def test_benchmark_guidance_mode_reports_flop_ratios_and_prior_throughput(capsys):
    """scripts/benchmark.py mode=guidance: its last line is JSON with one run per instance count (not timing checks)."""
    import importlib.util
    import json
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"
    spec = importlib.util.spec_from_file_location("benchmark_script", path)
    benchmark = sys.modules["benchmark_script"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    benchmark.main(["mode=guidance", "resolution=64", "steps=4", "instance_counts=[0,1,3]", "warmup=0", "repeats=1",
                    "prior_images=2"])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["instances"] for r in report["runs"]] == [0, 1, 3]
    for run in report["runs"]:  # ceil(4 * 0.3) = 2 guided steps of 4, each adding k U-Net rows per image
        assert run["unet_flop_ratio"] == pytest.approx((4 + 2 * run["instances"]) / 4)
        assert run["s_per_image"] > 0 and run["time_ratio"] == pytest.approx(
            run["s_per_image"] / report["runs"][0]["s_per_image"])
    assert sorted(report["prior_images_per_s"]) == ["caption", "category", "segmentation"]
    assert all(v > 0 for v in report["prior_images_per_s"].values()) and report["config"]["mode"] == "guidance"
