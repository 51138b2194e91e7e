"""Model cards (colordiff/model_card.py): every folder colordiff writes gets a README.md with the hub's YAML header,
what the model is, its training summary, and its evaluation tables (replaced, not duplicated, on a re-run)."""

import json
from pathlib import Path

import pytest
import yaml

from colordiff.cli import main
from colordiff.model_card import add_evaluation, base_license, read_card, write_model_card

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def _header(folder: Path) -> dict:
    text = (folder / "README.md").read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


@pytest.mark.parametrize("method", ["colordiff", "seada"])
def test_init_model_writes_a_card_with_the_hub_header(tmp_path, method, capsys):
    assert main(["init-model", str(tmp_path / "m"), "--tiny", "--method", method]) == 0
    header = _header(tmp_path / "m")
    assert header["library_name"] == "diffusers" and header["pipeline_tag"] == "image-to-image"
    assert header["tags"] == ["colorization", method]
    assert header["license"] == "apache-2.0" and "base_model" not in header  # random weights: no base
    body = (tmp_path / "m" / "README.md").read_text()
    assert f"colordiff colorize photos/ -o colorized/ --model {tmp_path / 'm'}" in body
    assert f"load_pipeline({str(tmp_path / 'm')!r})" in body and "Not trained by colordiff" in body
    assert ".tmp" not in body and "paper 00" in body


def test_a_stable_diffusion_base_gives_its_license_and_id(tmp_path, capsys):
    from colordiff.testing import save_tiny_stable_diffusion

    sd = save_tiny_stable_diffusion(tmp_path / "sd")
    (sd / "README.md").write_text("---\nlicense: creativeml-openrail-m\ntags: [stable-diffusion]\n---\n# SD\n")
    assert main(["init-model", str(tmp_path / "m"), "--base", str(sd)]) == 0
    header = _header(tmp_path / "m")
    assert header["license"] == "creativeml-openrail-m"
    assert header["colordiff"]["base"] == str(sd) and "base_model" not in header  # a local folder is no hub id
    assert base_license("stable-diffusion-v1-5/stable-diffusion-v1-5") == "creativeml-openrail-m"
    assert base_license("someone/unknown-model") == "other"
    (tmp_path / "m" / "model_index.json").write_text(json.dumps({"_class_name": "ColorDiffPipeline"}))
    write_model_card(tmp_path / "m", base_model="stable-diffusion-v1-5/stable-diffusion-v1-5")
    assert _header(tmp_path / "m")["base_model"] == "stable-diffusion-v1-5/stable-diffusion-v1-5"


def test_training_export_and_merge_cards(tmp_path, tiny_model_dir, fresh_accelerate, capsys):
    from colordiff.training.unet import TrainUNetConfig
    from colordiff.training.unet import main as train

    config = TrainUNetConfig(pretrained_model_name_or_path=str(tiny_model_dir), output_dir=str(tmp_path / "run"),
                             train_data_dir=str(REPO / "examples" / "photos"), text_source="empty", resolution=64,
                             train_batch_size=1, max_train_steps=1, learning_rate=3e-4, mixed_precision="no",
                             validation_images=[], report_to="none")
    model = train(config)
    header, body = read_card(model)
    assert header["tags"] == ["colorization", "colordiff"] and header["license"] == "apache-2.0"  # from the base
    assert "full fine-tune, 1 step (train_unet.py, Eq.2)" in header["colordiff"]["trained"]["unet"]
    for row in ("| `max_train_steps` | `1` |", "| `train_batch_size` | `1` |", "| `learning_rate` | `0.0003` |",
                "| `resolution` | `64` |", "| `prediction_type` | `epsilon` |", "| `lora_rank` | `0` |",
                f"| `train_data_dir` | `{REPO / 'examples' / 'photos'}` |"):
        assert row in body, row
    # merge-decoder: the U-Net's record carried over, the VAE's origin added
    assert main(["merge-decoder", str(model), str(tiny_model_dir), "-o", str(tmp_path / "merged")]) == 0
    trained = _header(tmp_path / "merged")["colordiff"]["trained"]
    assert trained["unet"] == header["colordiff"]["trained"]["unet"]
    assert trained["vae"] == f"untrained; merged from `{tiny_model_dir}` (merge-decoder)"
    assert f"Assembled from `{model}`" in read_card(tmp_path / "merged")[1]


def test_evaluation_section_is_added_then_replaced(tmp_path, capsys):
    assert main(["init-model", str(tmp_path / "m"), "--tiny"]) == 0
    folder = tmp_path / "m"
    add_evaluation(folder, "| Method | FID |\n|---|---|\n| ours | 12.3 |", name="cocostuff_val")
    add_evaluation(folder, "| Method | FID |\n|---|---|\n| ours | 45.6 |", name="imagenet_val5k")
    add_evaluation(folder, "| Method | FID |\n|---|---|\n| ours | 7.8 |", name="cocostuff_val")
    text = (folder / "README.md").read_text()
    assert text.count("## Evaluation: cocostuff_val") == 1 and "12.3" not in text and "| ours | 7.8 |" in text
    assert text.count("## Evaluation: imagenet_val5k") == 1 and "45.6" in text
    assert _header(folder)["library_name"] == "diffusers"  # the header survives
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []  # atomic writes leave no temp file


def test_reproduce_adds_its_tables_to_the_model_card(tmp_path, capsys, monkeypatch):
    from types import SimpleNamespace

    from colordiff.reproduce import _add_to_model_card

    assert main(["init-model", str(tmp_path / "m"), "--tiny"]) == 0
    config = SimpleNamespace(model=str(tmp_path / "m"), name="ade20k_val", row="b")
    _add_to_model_card(config, ["### Table 2\n\n| a | b |\n|---|---|\n| 1 | 2 |"])
    card = (tmp_path / "m" / "README.md").read_text()
    assert "## Evaluation: ade20k_val, row b" in card
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)  # a hub id is no folder here either: nothing is written, nothing is said
    _add_to_model_card(SimpleNamespace(model="someone/hub-model", name="x", row=None), ["t"])
    assert not (tmp_path / "someone").exists() and capsys.readouterr().err == ""
    _add_to_model_card(SimpleNamespace(model=str(tmp_path / "m"), name="y", row=None), [])  # no tables: nothing
    assert (tmp_path / "m" / "README.md").read_text() == card
