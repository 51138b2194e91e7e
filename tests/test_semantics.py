"""Prior generators (paper 000, Sec. 3.3; paper 001's captioners): tiny random models built from configs, saved, and
loaded back through the same code users use; shapes, batching, thresholds, prompts, model folders and the CLI."""

import json
import shutil

import numpy as np
import pytest
import torch

from colordiff.cli import main
from colordiff.pipelines import load_pipeline
from colordiff.semantics import (
    PRIORS_FILE,
    CaptionerConfig,
    ClassifierConfig,
    ImagePriors,
    Instances,
    PriorGeneratorError,
    PriorGenerators,
    SegmenterConfig,
    build_generator,
    compose_prompt,
    grayscale,
    resolve_prior_kinds,
)
from colordiff.semantics.priors import decode_mask, encode_mask
from colordiff.semantics.testing import (
    TINY_COCO,
    save_tiny_blip2,
    save_tiny_coca,
    save_tiny_prior_generators,
)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("priors")
    save_tiny_prior_generators(root)  # priors/{blip,efficientnet,mask2former} + semantic_priors.yaml
    save_tiny_coca(root / "priors" / "coca")
    save_tiny_blip2(root / "priors" / "blip2")
    return root


def _images():
    """Different sizes and contents: noise, a gradient, a checkerboard, a radial ramp, stripes. (Not a flat field: a
    random network normalises its zero variance into amplified rounding noise, batched or not.)"""
    y, x = np.mgrid[0:48, 0:48] / 48.0
    return [
        np.random.default_rng(0).random((40, 56, 3), dtype=np.float32),
        np.stack([x, y, x * y], -1).astype(np.float32),
        np.kron(np.indices((6, 8)).sum(0) % 2, np.ones((8, 8)))[..., None].repeat(3, -1).astype(np.float32),
        np.hypot(*np.mgrid[-18:18, -30:30] / 30.0)[..., None].repeat(3, -1).clip(0, 1).astype(np.float32),
        (np.sin(x * 20) * 0.5 + 0.5)[..., None].repeat(3, -1).astype(np.float32),
    ]


def _segmenter(folders, **options):
    config = SegmenterConfig(source=str(folders / "priors" / "mask2former"), revision=None, input_size=64,
                             **{"score_threshold": 0.0, "min_area": 0.0, "max_instances": 6, **options})
    return build_generator(config)


@pytest.mark.parametrize("name", ["blip", "blip2", "coca"])
def test_captioners_batch_equals_one_by_one(folders, name):
    captioner = build_generator(CaptionerConfig(name=name, source=str(folders / "priors" / name), max_new_tokens=6,
                                                num_beams=2, batch_size=3))
    images = grayscale(_images())
    batched = captioner(images)  # two forward passes: 3 + 2 images
    assert len(batched) == 5 and all(isinstance(c, str) and c for c in batched)
    assert batched == [captioner([image])[0] for image in images]
    assert len(set(batched)) > 1  # the captions depend on the image


def test_tiny_coca_sets_every_weight(tmp_path, monkeypatch):
    """No weight of the tiny CoCa comes from uninitialised memory: built with torch.empty handing out NaN (a long
    test process's recycled memory can hold anything), it is saved bit-identical. open_clip's CoCa text decoder
    leaves its text_projection as torch.empty; in full-suite runs it held garbage (weights summing to -4e21), and
    some runs gave one caption for every image."""
    from safetensors.torch import load_file

    weights = "open_clip_model.safetensors"
    clean = load_file(save_tiny_coca(tmp_path / "clean") / weights)
    empty = torch.empty

    def poisoned(*args, **kwargs):
        out = empty(*args, **kwargs)
        return out.fill_(float("nan")) if out.is_floating_point() else out

    monkeypatch.setattr(torch, "empty", poisoned)
    dirty = load_file(save_tiny_coca(tmp_path / "dirty") / weights)
    monkeypatch.undo()
    assert clean.keys() == dirty.keys()
    assert [k for k in clean if not torch.equal(clean[k], dirty[k])] == []


def test_beam_search_keeps_the_best_scoring_sequence():
    from colordiff.semantics.captioners import beam_search

    # a 4-token vocabulary (eos = 3): greedy takes token 0 (p = 0.5) and then must continue poorly; beam search finds
    # token 1 (p = 0.4) followed by a sure eos, the better sequence overall
    table = {(): [0.5, 0.4, 0.1, 0.0], (0,): [0.2, 0.3, 0.4, 0.1], (1,): [0.0, 0.0, 0.0, 1.0]}

    def next_logits(tokens):  # (N, L) -> (N, 4)
        rows = [table.get(tuple(row[1:]), [0.0, 0.0, 0.0, 1.0]) for row in tokens.tolist()]
        return torch.tensor(rows).clamp_min(1e-9).log()

    start = torch.zeros(2, 1, dtype=torch.long)
    greedy = beam_search(next_logits, start, 1, 3, eos_id=3, length_penalty=0.0)
    beams = beam_search(next_logits, start, 3, 3, eos_id=3, length_penalty=0.0)
    assert greedy[0].tolist() == [0, 2, 3]  # p = 0.5 * 0.4 * 1 = 0.2
    assert beams[0].tolist() == [1, 3, 3] and torch.equal(beams[0], beams[1])  # p = 0.4 * 1, then eos padding


def test_classifier_gives_top1_first_names_batch_independently(folders):
    classifier = build_generator(ClassifierConfig(source=str(folders / "priors" / "efficientnet"), revision=None,
                                                  batch_size=2))
    images = grayscale(_images())
    names = classifier(images)
    assert set(names) <= {"tabby", "goldfish", "red fox", "pizza"} and len(set(names)) > 1
    assert names == [classifier([image])[0] for image in images]
    with torch.no_grad():  # the same as the model's own arg-max, mapped through id2label
        pixels = classifier.processor(images=images, return_tensors="pt").pixel_values
        top = classifier.model(pixel_values=pixels).logits.argmax(-1).tolist()
    assert names == [classifier.model.config.id2label[i].split(",")[0] for i in top]


def test_segmenter_masks_labels_scores_and_batching(folders):
    segmenter = _segmenter(folders, batch_size=2)
    images = _images()
    results = segmenter(images)
    for image, inst in zip(images, results, strict=True):
        assert inst.masks.dtype == torch.bool and inst.masks.shape[1:] == image.shape[:2]
        assert 0 < len(inst) <= 6 and set(inst.labels) <= set(TINY_COCO)
        assert inst.scores == sorted(inst.scores, reverse=True)
        assert inst.masks.flatten(1).any(1).all()  # no empty mask
    for image, inst in zip(images, results, strict=True):
        alone = segmenter([image])[0]
        assert alone.labels == inst.labels and torch.equal(alone.masks, inst.masks)
        np.testing.assert_allclose(alone.scores, inst.scores, atol=1e-6)


def test_segmenter_thresholds(folders):
    images = _images()
    everything = _segmenter(folders)(images)
    scores = sorted(s for inst in everything for s in inst.scores)
    threshold = scores[len(scores) // 2]
    strict = _segmenter(folders, score_threshold=threshold)(images)
    for loose, kept in zip(everything, strict, strict=True):
        assert all(s >= threshold for s in kept.scores)
        assert kept.labels == [label for label, s in zip(loose.labels, loose.scores, strict=True) if s >= threshold]
    best = _segmenter(folders, max_instances=1)(images)
    assert [b.labels for b in best] == [e.labels[:1] for e in everything]
    areas = [float(m.float().mean()) for inst in everything for m in inst.masks]
    big = _segmenter(folders, min_area=float(np.median(areas)))(images)
    assert 0 < sum(len(b) for b in big) < sum(len(e) for e in everything)
    assert all(float(m.float().mean()) > 0.75 * np.median(areas) for inst in big for m in inst.masks)
    assert all(len(inst) == 0 for inst in _segmenter(folders, score_threshold=1.01)(images))


def test_prompt_template_is_applied():
    assert compose_prompt("{category}, {caption}", "goldfish", "a fish in a bowl") == "goldfish, a fish in a bowl"
    assert compose_prompt("{category}, {caption}", None, "a fish in a bowl") == "a fish in a bowl"
    assert compose_prompt("{category}, {caption}", "goldfish", None) == "goldfish"
    assert compose_prompt("a photo of {category}. {caption}", "goldfish", "a bowl") == "a photo of goldfish. a bowl"
    assert compose_prompt("{caption}", "goldfish", "a black and white photo of a dog",
                          drop_phrases=["black and white photo of"]) == "a a dog"
    assert compose_prompt("{category}, {caption}", None, None) == ""
    with pytest.raises(ValueError, match="only {category} and {caption}"):
        compose_prompt("{label}: {caption}", "x", "y")


def test_prior_generators_compose_prompts_from_their_yaml(folders, tmp_path):
    config = (folders / PRIORS_FILE).read_text().replace("prompt_template: '{category}, {caption}'",
                                                         "prompt_template: 'a photo of {category}: {caption}'")
    (tmp_path / PRIORS_FILE).write_text(config.replace("priors/", str(folders / "priors") + "/"))
    generators = PriorGenerators.from_file(tmp_path / PRIORS_FILE)
    priors = generators.compute(_images()[:2], ["caption", "category"])
    assert [p.instances for p in priors] == [None, None]
    for p in priors:
        assert generators.prompt(p) == f"a photo of {p.category}: {p.caption}"
    # computed on the grayscale image: a color image and its gray version get the same priors
    gray = [np.asarray(g, dtype=np.float32) / 255 for g in grayscale(_images()[:2])]
    assert [(p.caption, p.category) for p in generators.compute(gray, ["caption", "category"])] == \
        [(p.caption, p.category) for p in priors]


def test_priors_json_roundtrip():
    masks = torch.from_numpy(np.random.default_rng(0).random((3, 17, 23)) > 0.6)
    masks[2] = True  # a mask starting (and ending) with ones
    priors = ImagePriors("a dog", "dingo", Instances(masks, ["dog", "car", "sky"], [0.9, 0.5, 0.25]),
                         extra={"prompt": "dingo, a dog"})
    data = json.loads(json.dumps(priors.to_dict()))
    back = ImagePriors.from_dict(data)
    assert torch.equal(back.instances.masks, masks) and back.instances.labels == ["dog", "car", "sky"]
    assert (back.caption, back.category, back.extra) == ("a dog", "dingo", {"prompt": "dingo, a dog"})
    assert data["instances"][2]["mask"]["counts"][0] == 0
    with pytest.raises(ValueError, match="sum to"):
        decode_mask({"size": [2, 2], "counts": [1, 2]})
    assert decode_mask(encode_mask(np.zeros((0, 4), bool))).shape == (0, 4)


def test_resolve_prior_kinds():
    available = ("caption", "segmentation")
    assert resolve_prior_kinds("auto", available, "m") == ("caption", "segmentation")
    assert resolve_prior_kinds(None, (), "m") == () and resolve_prior_kinds("none", available, "m") == ()
    assert resolve_prior_kinds("segmentation,caption", available, "m") == ("caption", "segmentation")
    assert resolve_prior_kinds(["caption"], available, "m") == ("caption",)
    with pytest.raises(ValueError, match=r"model x records no classifier \(needed for the category prior\)"):
        resolve_prior_kinds("all", available, "model x")
    with pytest.raises(ValueError, match="unknown priors"):
        resolve_prior_kinds("colour", available, "m")


def test_loading_errors_name_the_generator_and_reason(folders, tmp_path):
    with pytest.raises(PriorGeneratorError, match="unknown captioner 'nope'; known: blip, blip2, coca"):
        build_generator(CaptionerConfig(name="nope"))
    with pytest.raises(PriorGeneratorError, match="unknown segmenter 'blip'"):
        build_generator(SegmenterConfig(name="blip"))
    with pytest.raises(PriorGeneratorError, match=r"cannot load captioner 'blip' from \./missing: folder "):
        build_generator(CaptionerConfig(source="./missing"))
    with pytest.raises(PriorGeneratorError, match="from no-such/model: no such folder, and as a hub id: "):
        build_generator(ClassifierConfig(source="no-such/model"), local_files_only=True)
    # pickle weights are never read: the same model saved as pytorch_model.bin does not load
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(folders / "priors" / "efficientnet")
    (tmp_path / "pickled").mkdir()
    torch.save(model.state_dict(), tmp_path / "pickled" / "pytorch_model.bin")  # written here, never read back
    for name in ("config.json", "preprocessor_config.json"):
        shutil.copy(folders / "priors" / "efficientnet" / name, tmp_path / "pickled")
    with pytest.raises(PriorGeneratorError, match="cannot load classifier"):
        build_generator(ClassifierConfig(source=str(tmp_path / "pickled"), revision=None))
    (tmp_path / "coca").mkdir()
    shutil.copy(folders / "priors" / "coca" / "open_clip_config.json", tmp_path / "coca")
    with pytest.raises(PriorGeneratorError, match="expected one .safetensors weights file, found 0"):
        build_generator(CaptionerConfig(name="coca", source=str(tmp_path / "coca")))


# -- model folders, pipeline and CLI ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_with_priors(folders, tiny_model_dir, tmp_path_factory):
    """The tiny model folder plus its prior generators recorded in semantic_priors.yaml (relative folders)."""
    model = tmp_path_factory.mktemp("model") / "tiny_priors"
    shutil.copytree(tiny_model_dir, model)
    shutil.copytree(folders / "priors", model / "priors", ignore=shutil.ignore_patterns("coca", "blip2"))
    shutil.copy(folders / PRIORS_FILE, model / PRIORS_FILE)
    return model


def _run(pipe, images, **kwargs):
    gens = [torch.Generator().manual_seed(i) for i in range(len(images))]
    return pipe(images, generator=gens, num_inference_steps=3, resolution=64, output_type="np", **kwargs)


def test_model_folder_records_its_generators(model_with_priors, tmp_path):
    pipe = load_pipeline(model_with_priors)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.prior_generators.available == ("caption", "category", "segmentation")
    images = _images()[:1]
    auto = _run(pipe, images)  # default "auto": every recorded prior
    assert all(p.caption and p.category and len(p.instances) > 0 for p in auto.priors)
    assert auto.priors[0].extra["prompt"] == f"{auto.priors[0].category}, {auto.priors[0].caption}"
    plain = _run(pipe, images, priors="none")
    assert plain.priors is None and np.abs(auto.images[0] - plain.images[0]).max() > 1e-3
    reused = _run(pipe, images, priors=[json.loads(json.dumps(p.to_dict())) for p in auto.priors])
    for a, b in zip(auto.images, reused.images, strict=True):
        np.testing.assert_array_equal(a, b)  # precomputed priors (a sidecar's JSON) reproduce the run

    pipe.save_pretrained(tmp_path / "copy")  # the generator folders travel inside the copy: it works anywhere
    shutil.move(tmp_path / "copy", tmp_path / "moved")
    original = model_with_priors / "priors"
    original.rename(tmp_path / "away")  # the copy must not reach back to the original folders
    try:
        copy = load_pipeline(tmp_path / "moved")
        assert copy.prior_generators.available == pipe.prior_generators.available
        for spec in (copy.prior_generators.config.captioner, copy.prior_generators.config.segmenter):
            assert spec.source == f"priors/{spec.source.rsplit('/', 1)[-1]}"  # recorded relative to the copy
        assert copy.prior_generators.generator("category").model.config.id2label == \
            pipe.prior_generators.generator("category").model.config.id2label
    finally:
        (tmp_path / "away").rename(original)


def test_missing_generator_is_a_clear_error(model_with_priors, tiny_model_dir, tmp_path):
    pipe = load_pipeline(tiny_model_dir)  # records nothing: today's behaviour, and asking names what is missing
    assert pipe.prior_generators is None and pipe.resolve_priors() == ()
    with pytest.raises(ValueError, match=rf"model {tiny_model_dir} records no segmenter"):
        _run(pipe, _images()[:1], priors="segmentation")
    broken = tmp_path / "broken"
    shutil.copytree(model_with_priors, broken, ignore=shutil.ignore_patterns("priors"))
    pipe = load_pipeline(broken)
    with pytest.raises(PriorGeneratorError, match=rf"cannot load captioner 'blip' from priors/blip: no such folder "
                                                  rf"under {broken}, and as a hub id: "):
        _run(pipe, _images()[:1], priors="caption")


def test_cli_priors_sidecars_prompt_and_errors(model_with_priors, tiny_model_dir, tmp_path, capsys):
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    for i, image in enumerate(_images()[:2]):
        Image.fromarray((image * 255).astype(np.uint8)).save(photos / f"p{i}.png")
    out = tmp_path / "out"
    fast = ["--steps", "2", "--resolution", "64"]
    args = ["colorize", str(photos), "-o", str(out), "--model", str(model_with_priors), *fast]
    assert main([*args, "--priors", "all", "--save-priors"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["p0.png", "p0.priors.json", "p1.png", "p1.priors.json"]
    data = json.loads((out / "p0.priors.json").read_text())
    assert data["source"] == "p0.png" and data["seg_strength"] == 0.3 and data["caption"] and data["category"]
    assert data["prompt"] == f"{data['category']}, {data['caption']}"
    inst = ImagePriors.from_dict(data).instances
    assert inst.masks.shape[1:] == (40, 56) and len(inst) == len(data["instances"]) > 0

    (out / "p1.priors.json").unlink()  # resume: with --save-priors a missing sidecar means unfinished
    capsys.readouterr()
    assert main([*args, "--save-priors"]) == 0
    assert "1 colorized, 1 skipped (already done), 0 failed" in capsys.readouterr().err

    assert main(["colorize", str(photos / "p0.png"), "-o", str(out), "--model", str(model_with_priors), *fast,
                 "--priors", "segmentation", "--prompt", "a red apple", "--save-priors", "--overwrite",
                 "--seg-strength", "0.5"]) == 0
    data = json.loads((out / "p0.priors.json").read_text())
    assert data["prompt"] == "a red apple" and data["caption"] is None and data["seg_strength"] == 0.5
    assert len(data["instances"]) > 0

    capsys.readouterr()
    assert main(["colorize", str(photos), "-o", str(tmp_path / "o2"), "--model", str(tiny_model_dir),
                 "--priors", "caption"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("colordiff: error:") and "records no captioner" in err and len(err.splitlines()) == 1
    assert main([*args, "--seg-strength", "2"]) == 2
    # a model that records nothing can still use the generators a YAML names (priors_config)
    assert main(["colorize", str(photos / "p0.png"), "-o", str(tmp_path / "o3"), "--model", str(tiny_model_dir),
                 *fast, "--priors", "category", "--save-priors",
                 f"priors_config={model_with_priors / PRIORS_FILE}"]) == 0
    assert json.loads((tmp_path / "o3" / "p0.priors.json").read_text())["category"]
