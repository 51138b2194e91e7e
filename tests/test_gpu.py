"""Checks that need a CUDA device (marked `gpu`, skipped without one; scripts/gpu_check.py runs them)."""

import numpy as np
import pytest
import torch

from colordiff.color import rgb_to_luminance
from colordiff.testing import tiny_colordiff_pipeline

pytestmark = pytest.mark.gpu


def test_cuda_generators_draw_on_the_gpu_and_reproduce():
    """diffusers' habit `generator=torch.Generator("cuda")` works: the noise is drawn on the GPU (as diffusers'
    randn_tensor draws it), a seed repeats, and the output keeps the input's exact L in bf16."""
    pipe = tiny_colordiff_pipeline().to("cuda", torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    gray = np.random.default_rng(0).random((64, 80, 3)).astype(np.float32)

    def run(generator):
        return pipe([gray], num_inference_steps=2, resolution=64, generator=generator, output_type="pt").images[0]

    first, again = (run(torch.Generator("cuda").manual_seed(0)) for _ in range(2))
    assert torch.equal(first, again) and torch.isfinite(first).all()
    on_cpu = run(torch.Generator("cpu").manual_seed(0))
    assert on_cpu.shape == first.shape == (3, 64, 80)
    expected = rgb_to_luminance(torch.from_numpy(gray).permute(2, 0, 1)[None])
    assert (rgb_to_luminance(first.float().cpu()[None]) - expected).abs().max() < 0.01
