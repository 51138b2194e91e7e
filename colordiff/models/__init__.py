"""Model components of ColorDiff and SeAda, as diffusers ModelMixin/ConfigMixin models (safetensors)."""

from colordiff.models.concat_unet import ConcatUNet2DConditionModel
from colordiff.models.luminance_decoder import LuminanceAwareAutoencoderKL

__all__ = ["ConcatUNet2DConditionModel", "LuminanceAwareAutoencoderKL"]
