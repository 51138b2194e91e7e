"""Write LPIPS(VGG)'s full state dict as safetensors, for training the decoder on a machine without internet.

Run it once where torchvision can download VGG16's ImageNet weights, copy the file over, and set
`perceptual_weights=/path/lpips_vgg.safetensors` in the decoder recipe.

    python scripts/export_lpips.py lpips_vgg.safetensors
"""

import argparse

from safetensors.torch import save_file

from colordiff.io import atomic_write
from colordiff.training.losses import build_perceptual


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", help="the .safetensors file to write")
    args = parser.parse_args(argv)
    state = {k: v.contiguous() for k, v in build_perceptual("package").state_dict().items()}
    with atomic_write(args.output) as tmp:
        save_file(state, str(tmp))
    print(f"wrote {args.output} ({len(state)} tensors)")


if __name__ == "__main__":
    main()
