"""Category prior (paper 000, Sec. 3.3 [19]): an ImageNet EfficientNet's top-1 class name for the grayscale image."""

from __future__ import annotations

import PIL.Image
import torch

from colordiff.semantics.base import PriorGenerator, hub_kwargs


class EfficientNetClassifier(PriorGenerator):
    """A transformers image classifier (EfficientNet by default) -> the top-1 label's first name ("tabby", not
    "tabby, tabby cat": ImageNet labels list synonyms after commas)."""

    kind = "classifier"

    def __init__(self, model, processor, batch_size: int = 32):
        super().__init__(model, batch_size)
        self.processor = processor

    @classmethod
    def from_pretrained(cls, source: str, *, revision: str | None = None, local_files_only: bool = False,
                        device="cpu", dtype=torch.float32, **options):
        """Safetensors weights only (`use_safetensors=True`); no remote code."""
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        kwargs = hub_kwargs(revision, local_files_only)
        model = AutoModelForImageClassification.from_pretrained(source, use_safetensors=True, dtype=dtype, **kwargs)
        processor = AutoImageProcessor.from_pretrained(source, **kwargs)
        return cls(model.to(device), processor, **options)

    def _run(self, images: list[PIL.Image.Image]) -> list[str]:
        pixels = self.processor(images=images, return_tensors="pt").pixel_values.to(self.device, self.dtype)
        top = self.model(pixel_values=pixels).logits.argmax(-1).tolist()  # (B,)
        return [self.model.config.id2label[i].split(",")[0].strip() for i in top]
