"""Instance prior (paper 000, Sec. 3.3): binary masks M^i and labels L^i of the grayscale image.

The paper used Transfiner [21]; no maintained package ships it, so Mask2Former trained on COCO instances (80 classes,
from transformers) stands in behind the same interface.
"""

from __future__ import annotations

import PIL.Image
import torch
import torch.nn.functional as F

from colordiff.semantics.base import PriorGenerator, hub_kwargs
from colordiff.semantics.priors import Instances


class Mask2FormerSegmenter(PriorGenerator):
    """Mask2Former instance segmentation with Mask2Former's own ranking, vectorised over queries and images.

    Each query gets its most likely class (so one mask never appears twice under two labels) and the score
    class probability x mean mask probability inside its mask, as Mask2Former's instance inference. Kept: score >=
    score_threshold and area >= min_area (a fraction of the image), then the max_instances best. Images are squashed
    to input_size^2, so every image of a batch has the same shape and results do not depend on batching; the kept
    masks' logits are resized back to each image's size (bilinear) before thresholding at 0.
    """

    kind = "segmenter"

    def __init__(self, model, processor, score_threshold: float = 0.5, min_area: float = 0.002,
                 max_instances: int = 8, input_size: int = 384, batch_size: int = 8):
        super().__init__(model, batch_size)
        if not 0 <= min_area < 1 or max_instances < 0 or input_size < 32:
            raise ValueError(f"bad segmenter settings: min_area={min_area} (in [0, 1)), max_instances="
                             f"{max_instances} (>= 0), input_size={input_size} (>= 32)")
        self.processor, self.score_threshold, self.min_area = processor, score_threshold, min_area
        self.max_instances, self.input_size = max_instances, input_size

    @classmethod
    def from_pretrained(cls, source: str, *, revision: str | None = None, local_files_only: bool = False,
                        device="cpu", dtype=torch.float32, **options):
        """Safetensors weights only (`use_safetensors=True`); no remote code."""
        from transformers import AutoImageProcessor, Mask2FormerForUniversalSegmentation

        kwargs = hub_kwargs(revision, local_files_only)
        model = Mask2FormerForUniversalSegmentation.from_pretrained(source, use_safetensors=True, dtype=dtype,
                                                                    **kwargs)
        processor = AutoImageProcessor.from_pretrained(source, **kwargs)
        return cls(model.to(device), processor, **options)

    def _run(self, images: list[PIL.Image.Image]) -> list[Instances]:
        size = {"height": self.input_size, "width": self.input_size}
        pixels = self.processor(images=images, size=size, return_tensors="pt").pixel_values
        out = self.model(pixel_values=pixels.to(self.device, self.dtype))
        probs = out.class_queries_logits.float().softmax(-1)[..., :-1]  # (B, Q, C): the last class is "no object"
        class_prob, class_id = probs.max(-1)  # (B, Q)
        mask_logits = out.masks_queries_logits.float()  # (B, Q, h, w) at 1/4 of input_size
        inside = (mask_logits > 0).float()
        mask_prob = (mask_logits.sigmoid() * inside).flatten(2).sum(-1) / (inside.flatten(2).sum(-1) + 1e-6)
        scores = class_prob * mask_prob  # (B, Q)
        keep = (scores >= self.score_threshold) & (inside.mean((-2, -1)) >= max(self.min_area, 1e-9))
        ranked = torch.where(keep, scores, -1.0).argsort(-1, descending=True)[:, : self.max_instances]  # (B, <=N)
        return [self._instances(image, mask_logits[b], class_id[b], scores[b], ranked[b][keep[b][ranked[b]]])
                for b, image in enumerate(images)]

    def _instances(self, image, mask_logits, class_id, scores, chosen) -> Instances:
        """The chosen queries' masks at the image's size (H, W); masks that come out empty there are dropped."""
        height, width = image.height, image.width
        if len(chosen) == 0:
            return Instances.empty(height, width)
        masks = F.interpolate(mask_logits[chosen][None], size=(height, width), mode="bilinear",
                              align_corners=False)[0] > 0  # (K, H, W)
        present = masks.flatten(1).any(-1).nonzero().flatten().tolist()
        labels = [self.model.config.id2label[int(class_id[chosen[i]])] for i in present]
        return Instances(masks[present].cpu(), labels, [float(scores[chosen[i]]) for i in present])
