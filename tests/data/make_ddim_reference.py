"""Reference DDIM outputs, written by colordiff at commit 19fca58 when DDIM was the only sampler;
tests/test_schedulers.py asserts the default sampler still gives them. From the repository root:
python tests/data/make_ddim_reference.py"""

import numpy as np
import torch
from diffusers import DDIMScheduler
from safetensors.torch import save_file

from colordiff.semantics import ImagePriors, Instances
from colordiff.testing import tiny_colordiff_pipeline, tiny_seada_pipeline

PROMPTS = ["a red car", "a green tree"]


def inputs():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), rng.integers(0, 256, (64, 40, 3), dtype=np.uint8)]
    masks = torch.zeros(2, 48, 64, dtype=torch.bool)
    masks[0, :20, :30] = True
    masks[1, 10:40, 20:60] = True
    priors = [ImagePriors(instances=Instances(masks=masks, labels=["car", "sky"], scores=torch.tensor([0.9, 0.8]))),
              ImagePriors()]
    return images, priors


def generators():
    return [torch.Generator().manual_seed(seed) for seed in (1, 2)]


def outputs() -> dict[str, torch.Tensor]:
    images, priors = inputs()
    common = {"prompt": PROMPTS, "num_inference_steps": 6, "resolution": 64, "output_type": "pt"}
    colordiff, seada = tiny_colordiff_pipeline(), tiny_seada_pipeline()
    for pipe in (colordiff, seada):  # the spacing the references were written with (SD1.5's own)
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing="leading")
    runs = {"colordiff": colordiff(images, generator=generators(), priors="none", **common),
            "colordiff_seg": colordiff(images, generator=generators(), priors=priors, seg_strength=0.5, **common),
            "seada": seada(images, generator=generators(), priors="none", **common)}
    return {f"{name}_{i}": image.contiguous() for name, run in runs.items() for i, image in enumerate(run.images)}


if __name__ == "__main__":
    torch.set_num_threads(1)
    save_file(outputs(), "tests/data/ddim_reference.safetensors")
