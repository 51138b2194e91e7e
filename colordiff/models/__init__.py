"""Model components of ColorDiff and SeAda, as diffusers ModelMixin/ConfigMixin models (safetensors)."""

from colordiff.models.concat_unet import ConcatUNet2DConditionModel
from colordiff.models.control import SeAdaControlModel
from colordiff.models.luminance_decoder import LuminanceAwareAutoencoderKL
from colordiff.models.semantic_adapter import SemanticAdapter

__all__ = ["ConcatUNet2DConditionModel", "LuminanceAwareAutoencoderKL", "SeAdaControlModel", "SemanticAdapter"]
