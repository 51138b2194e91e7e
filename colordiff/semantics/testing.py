"""Tiny random prior generators for tests, smoke runs and CPU benchmarks: built from configs, nothing downloads.

Each `save_tiny_*` writes a folder in the layout of the real hub repos (safetensors weights, config, processor or
tokenizer files) that the generators load through the same `from_pretrained` code as real weights. The random
weights are scaled up (initializer_range 0.5) so that outputs depend on the image, which the tests need to tell
images apart.
"""

from __future__ import annotations

import json
import string
from contextlib import contextmanager
from pathlib import Path

import torch

from colordiff.semantics.config import (
    PRIORS_FILE,
    CaptionerConfig,
    ClassifierConfig,
    PriorsConfig,
    SegmenterConfig,
)

TINY_IMAGENET = ("tabby, tabby cat", "goldfish, Carassius auratus", "red fox, Vulpes vulpes", "pizza, pizza pie")
TINY_COCO = ("person", "car", "dog", "pizza")
WORDS = ("a", "photo", "of", "dog", "cat", "red", "car", "on", "the", "street", "black", "and", "white", "grass")


@contextmanager
def _seeded(seed: int):
    """Random initialisation from `seed` without touching the caller's global random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _labels(names) -> dict:
    return {"id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}}


def tiny_bert_tokenizer():
    """A WordPiece tokenizer over a few words and letters, with BLIP's decoder start token [DEC]."""
    from transformers import BertTokenizer

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    tokens = specials + list(WORDS) + list(string.ascii_lowercase) + ["##" + c for c in string.ascii_lowercase]
    return BertTokenizer(vocab={t: i for i, t in enumerate(tokens)}, bos_token="[DEC]", model_max_length=40)


def save_tiny_blip(path: str | Path, seed: int = 0) -> Path:
    """BlipForConditionalGeneration (2 + 2 layers, width 32, 32 px) with its BlipProcessor."""
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    tokenizer = tiny_bert_tokenizer()
    vocab = tokenizer.get_vocab()
    config = BlipConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, encoder_hidden_size=32, max_position_embeddings=64,
                         initializer_range=0.5, bos_token_id=vocab["[DEC]"], pad_token_id=vocab["[PAD]"],
                         sep_token_id=vocab["[SEP]"], eos_token_id=vocab["[SEP]"]),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8, initializer_range=0.5),
        projection_dim=16, initializer_range=0.5,
    )
    with _seeded(seed):
        model = BlipForConditionalGeneration(config)
    model.save_pretrained(path, safe_serialization=True)
    BlipProcessor(BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer).save_pretrained(path)
    return Path(path)


def save_tiny_blip2(path: str | Path, seed: int = 0) -> Path:
    """Blip2ForConditionalGeneration (1-layer ViT, Q-Former and OPT, width 32) with a byte-level GPT-2 tokenizer."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        BlipImageProcessor,
        GPT2Tokenizer,
        OPTConfig,
    )

    vocab = {c: i for i, c in enumerate(sorted(ByteLevel.alphabet()))}
    vocab.update({"</s>": len(vocab), "<pad>": len(vocab) + 1})
    tokenizer = GPT2Tokenizer(vocab=vocab, merges=[], bos_token="</s>", eos_token="</s>", unk_token="</s>",
                              pad_token="<pad>")
    processor = Blip2Processor(BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer, num_query_tokens=4)
    size = len(tokenizer)  # the processor added <image>
    text = OPTConfig(vocab_size=size, hidden_size=32, num_hidden_layers=1, ffn_dim=37, num_attention_heads=4,
                     max_position_embeddings=64, word_embed_proj_dim=32, init_std=0.5, bos_token_id=vocab["</s>"],
                     eos_token_id=vocab["</s>"], pad_token_id=vocab["<pad>"])
    config = Blip2Config(
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4,
                           image_size=32, patch_size=8, initializer_range=0.5),
        qformer_config=dict(vocab_size=size, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                            intermediate_size=37, encoder_hidden_size=32, max_position_embeddings=64),
        text_config=text.to_dict(), num_query_tokens=4, image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        initializer_range=0.5,
    )
    with _seeded(seed):
        model = Blip2ForConditionalGeneration(config)
    model.save_pretrained(path, safe_serialization=True)
    processor.save_pretrained(path)
    return Path(path)


TINY_COCA_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8,
                   "attentional_pool": True, "attn_pooler_queries": 8, "attn_pooler_heads": 2, "output_tokens": True},
    "text_cfg": {"context_length": 20, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1, "embed_cls": True,
                 "output_tokens": True},
    "multimodal_cfg": {"context_length": 20, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1,
                       "attn_pooler_heads": 2, "dim_head": 16},
    "custom_text": True,
}


def init_coca_text_projection(model):
    """Initialise the one parameter open_clip's CoCa leaves as uninitialised memory, and return `model`.

    open_clip's MultimodalTransformer (the CoCa text decoder) allocates `text_projection` (width x vocabulary) with
    torch.empty and never initialises it: its init_parameters is not called (and would fail if it were). A freshly
    mapped page reads as zeros, so in a new process the projection usually happens to be 0; in a long process (a
    test suite) the allocator hands back freed memory and the projection holds whatever was there: garbage up to
    1e16 and more, which can make every logit a tie and every caption "!!!!!!". Here it gets open_clip's intended
    init (normal, std width ** -0.5). Real checkpoints overwrite it when loaded (strictly): only random models need it.
    """
    decoder = model.text_decoder
    with torch.no_grad():
        torch.nn.init.normal_(decoder.text_projection, std=decoder.width ** -0.5)
    return model


def save_tiny_coca(path: str | Path, seed: int = 0) -> Path:
    """An open_clip CoCa (1-layer towers, width 32, 32 px, CLIP's 49408-token vocabulary) in the hub layout:
    open_clip_config.json + open_clip_model.safetensors."""
    from open_clip.coca_model import CoCa
    from safetensors.torch import save_model

    config = {k: v for k, v in TINY_COCA_CONFIG.items() if k != "custom_text"}
    with _seeded(seed), torch.no_grad():
        model = init_coca_text_projection(CoCa(**config))
        for param in model.parameters():  # open_clip zero-inits some biases and projections: make every part matter
            param.add_(torch.randn_like(param) * 0.3)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_COCA_CONFIG, "preprocess_cfg": {}}))
    save_model(model, str(path / "open_clip_model.safetensors"))  # handles tied / shared tensors
    return path


def save_tiny_efficientnet(path: str | Path, seed: int = 0, labels=TINY_IMAGENET) -> Path:
    """EfficientNetForImageClassification (width x0.1, depth x0.1, 32 px) over a few ImageNet-style labels.

    Random convolutions followed by batch norms with unit statistics shrink the signal ~10x per block until every
    image gives the same logits, so the norms are calibrated once on random inputs (train-mode statistics).
    """
    from transformers import EfficientNetConfig, EfficientNetForImageClassification, EfficientNetImageProcessor

    config = EfficientNetConfig(image_size=32, width_coefficient=0.1, depth_coefficient=0.1, hidden_dim=128,
                                num_labels=len(labels), **_labels(labels))
    with _seeded(seed), torch.no_grad():
        model = EfficientNetForImageClassification(config)
        for module in model.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
            if isinstance(module, torch.nn.BatchNorm2d):
                module.momentum = None  # cumulative average over the calibration batch
        # calibration images like the processor's output for gray photos: uniform gray levels, ImageNet-normalised
        mean, std = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
        calibration = (torch.rand(32, 1, 32, 32).expand(-1, 3, -1, -1) - mean) / std  # (32, 3, 32, 32)
        model.train()(pixel_values=calibration)
        model.eval()
        features = model.efficientnet(pixel_values=calibration).pooler_output  # (32, 128)
        model.classifier.weight.normal_(0.0, 1.0)
        model.classifier.bias.copy_(-model.classifier.weight @ features.mean(0))  # centred: no class always wins
    model.eval().save_pretrained(path, safe_serialization=True)
    EfficientNetImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return Path(path)


def save_tiny_mask2former(path: str | Path, seed: int = 0, labels=TINY_COCO) -> Path:
    """Mask2FormerForUniversalSegmentation (a 4-stage Swin of width 16, 6 queries) over a few COCO-style labels."""
    from transformers import (
        Mask2FormerConfig,
        Mask2FormerForUniversalSegmentation,
        Mask2FormerImageProcessor,
        SwinConfig,
    )

    backbone = SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
                          window_size=4, out_features=["stage1", "stage2", "stage3", "stage4"])
    config = Mask2FormerConfig(backbone_config=backbone, feature_size=32, mask_feature_size=32, hidden_dim=32,
                               encoder_feedforward_dim=32, encoder_layers=1, decoder_layers=2, num_attention_heads=2,
                               dim_feedforward=32, num_queries=6, num_labels=len(labels), init_std=0.5,
                               **_labels(labels))
    with _seeded(seed):
        model = Mask2FormerForUniversalSegmentation(config)
    model.save_pretrained(path, safe_serialization=True)
    Mask2FormerImageProcessor(size={"height": 64, "width": 64}).save_pretrained(path)
    return Path(path)


def save_tiny_prior_generators(root: str | Path, seed: int = 0, captioner: str = "blip") -> PriorsConfig:
    """Tiny BLIP (or CoCa / BLIP-2), EfficientNet and Mask2Former folders under `root`, and `root/semantic_priors.yaml`
    naming them by relative path, as a model folder records its generators. Returns that config.

    The segmenter keeps every instance (threshold 0) at 64 px, so tiny random masks still reach the sampler.
    """
    from colordiff.config import to_yaml

    root = Path(root)
    save = {"blip": save_tiny_blip, "coca": save_tiny_coca, "blip2": save_tiny_blip2}[captioner]
    save(root / "priors" / captioner, seed)
    save_tiny_efficientnet(root / "priors" / "efficientnet", seed)
    save_tiny_mask2former(root / "priors" / "mask2former", seed)
    config = PriorsConfig(
        captioner=CaptionerConfig(name=captioner, source=f"priors/{captioner}", max_new_tokens=8, num_beams=2),
        classifier=ClassifierConfig(source="priors/efficientnet", revision=None),
        segmenter=SegmenterConfig(source="priors/mask2former", revision=None, score_threshold=0.0, min_area=0.0,
                                  max_instances=2, input_size=64),
    )
    (root / PRIORS_FILE).write_text(to_yaml(config))
    return config


def paper_sized_generators(device="cpu", dtype=torch.float32) -> dict:
    """Random-weight generators with the papers' architectures, for timing where the weights are neither needed
    nor available: BLIP-large captioner (ViT-L/16 at 384 px + BERT-base decoder), EfficientNet-B7 (600 px),
    Mask2Former Swin-L COCO-instance (384 px, 200 queries) and CoCa ViT-L/14. Tokenizers are stand-ins with the
    real vocabulary sizes. Random decoders rarely emit end-of-text, so captions run to max_new_tokens: worst case.
    """
    from open_clip.coca_model import CoCa
    from open_clip.factory import get_model_config
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
        EfficientNetConfig,
        EfficientNetForImageClassification,
        EfficientNetImageProcessor,
        Mask2FormerConfig,
        Mask2FormerForUniversalSegmentation,
        Mask2FormerImageProcessor,
        SwinConfig,
    )

    from colordiff.semantics.captioners import BlipCaptioner, CocaCaptioner
    from colordiff.semantics.classifier import EfficientNetClassifier
    from colordiff.semantics.segmenter import Mask2FormerSegmenter

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {t: i for i, t in enumerate(specials + [f"w{i}" for i in range(30522 - len(specials))] + ["[DEC]"])}
    tokenizer = BertTokenizer(vocab=vocab, bos_token="[DEC]")
    blip = BlipForConditionalGeneration(BlipConfig(
        vision_config=dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                           image_size=384, patch_size=16),
        text_config=dict(vocab_size=len(vocab), encoder_hidden_size=1024, bos_token_id=vocab["[DEC]"],
                         pad_token_id=0, sep_token_id=vocab["[SEP]"], eos_token_id=vocab["[SEP]"])))
    blip_processor = BlipProcessor(BlipImageProcessor(size={"height": 384, "width": 384}), tokenizer)
    names = [f"class {i}" for i in range(1000)]
    efficientnet = EfficientNetForImageClassification(EfficientNetConfig(num_labels=1000, **_labels(names)))  # B7
    swin = SwinConfig(image_size=384, embed_dim=192, depths=[2, 2, 18, 2], num_heads=[6, 12, 24, 48], window_size=12,
                      out_features=["stage1", "stage2", "stage3", "stage4"])
    mask2former = Mask2FormerForUniversalSegmentation(Mask2FormerConfig(
        backbone_config=swin, num_queries=200, num_labels=80, **_labels([f"thing {i}" for i in range(80)])))
    coca_config = {k: v for k, v in get_model_config("coca_ViT-L-14").items() if k != "custom_text"}
    generators = {
        "blip": BlipCaptioner(blip, blip_processor, max_new_tokens=30, num_beams=3),
        "coca": CocaCaptioner(init_coca_text_projection(CoCa(**coca_config)), 224, max_new_tokens=30, num_beams=3),
        "efficientnet": EfficientNetClassifier(efficientnet, EfficientNetImageProcessor(
            size={"height": 600, "width": 600})),
        "mask2former": Mask2FormerSegmenter(mask2former, Mask2FormerImageProcessor(size={"height": 384, "width": 384}),
                                            score_threshold=0.0, min_area=0.0),
    }
    return {name: generator.to(device, dtype) for name, generator in generators.items()}
