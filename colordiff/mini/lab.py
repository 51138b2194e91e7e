"""The miniature lab (scripts/miniature.py): both papers' recipes at miniature scale, scored on held-out photos.

One command builds the base (colordiff/mini/base.py), then runs only the project's own entry points on it, exactly
as on Stable Diffusion 1.5: `colordiff init-model --base`, scripts/train_unet.py and train_decoder.py (paper 000),
`colordiff merge-decoder`, scripts/train_seada.py stages 0-III (paper 001), `colordiff colorize` on the held-out
photos with each model and `colordiff evaluate`; then the table in the papers' layout and a grid (report.py).

Every phase's output is reused when present, so an interrupted run resumes; one progress line per phase.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from colordiff.config import ConfigError, dotlist_value
from colordiff.io import atomic_write, write_image
from colordiff.mini.captions import write_folder_captions
from colordiff.mini.photos import list_photos, load_photo, photo_files, photo_names

REPO = Path(__file__).resolve().parents[2]


@dataclass
class LabConfig:
    """Settings of scripts/miniature.py (configs/mini/lab.yaml)."""

    data_dir: str = "???"  # a folder of color photos (recursive; black-and-white ones are left out)
    heldout: list[str] = field(default_factory=list)  # photo names (file stems) held out of every training phase
    # k > 0: also hold out every k-th color photo of each source folder, by sorted path (photos.heldout_by_rule)
    heldout_every: int = 0
    work_dir: str = "outputs/mini"
    image_size: int = 128  # the shorter side every photo is resized to (training and held-out alike)
    # Des_g / Des_c per photo ("<name>.png" keys); "folder": written from data_dir's own labels (mini/captions.py)
    captions: str = "configs/mini/captions.jsonl"
    # a second test set, never trained on: every color photo of this folder (black-and-white ones screened out),
    # scored like the held-out photos; test_captions: their Des_g for the caption-prompt row ("" leaves it out)
    test_dir: str = ""
    test_captions: str = ""
    # N > 1: every model draws N samples per test photo; the per-pixel mean of the N (a/b averaged, L kept) is scored
    # for the conditional-colors gate, sample 0 is the single-sample row
    mean_samples: int = 0
    base_config: list[str] = field(default_factory=lambda: ["configs/mini/base.yaml"])
    base_overrides: list[str] = field(default_factory=list)
    unet_recipe: list[str] = field(default_factory=lambda: ["configs/colordiff/unet.yaml", "configs/mini/unet.yaml"])
    decoder_recipe: list[str] = field(default_factory=lambda: ["configs/colordiff/decoder.yaml",
                                                               "configs/mini/decoder.yaml"])
    seada_recipes: list[str] = field(default_factory=lambda: [f"configs/mini/seada_stage{n}.yaml" for n in range(4)])
    train_overrides: list[str] = field(default_factory=list)  # key=value for every training phase (smoke runs)
    seada_overrides: list[str] = field(default_factory=list)  # key=value for every SeAda stage, after train_overrides
    colorize_config: str = "configs/mini/colorize.yaml"
    colorize_overrides: list[str] = field(default_factory=list)
    colordiff: bool = True
    seada: bool = True
    # encode the U-Net's training images once (scripts/precompute_latents.py) instead of twice per step; exact where
    # the crops are the whole images (resize_range [1, 1] at the images' size), as in the world
    latents_cache: bool = False
    # the color-rule world (colordiff/mini/world.py) instead of photos: world_scenes > 0 generated training scenes
    # (seed world_seed) and world_heldout held-out scenes from another seed, at image_size; data_dir is not read
    world_scenes: int = 0
    world_heldout: int = 25
    world_seed: int = 0
    world_heldout_seed: int = 1000
    threads: int = 0  # OMP/torch threads of each phase (0: as the environment says)


def paper_recipe(name: str) -> str:
    """configs/seada/stage<n>.yaml beside each mini stage recipe: the paper's file that the mini one shrinks."""
    return f"configs/seada/{Path(name).name.replace('seada_', '')}"


class MiniatureRun:
    """The phases of one miniature run, each skipped when its output exists."""

    def __init__(self, config: LabConfig):
        self.config, self.work = config, Path(config.work_dir)
        self.start, self.repo = time.time(), REPO

    # -- plumbing ---------------------------------------------------------------------------------------------------
    def log(self, message: str) -> None:
        print(f"[mini {time.time() - self.start:6.0f} s] {message}", file=sys.stderr, flush=True)

    def phase(self, name: str, output: Path, run) -> Path:
        """Run one phase unless its output exists; one progress line either way."""
        if output.exists():
            self.log(f"{name}: reusing {output}")
            return output
        begin = time.time()
        run()
        if not output.exists():
            raise RuntimeError(f"phase {name} finished without writing {output}")
        self.log(f"{name}: done in {time.time() - begin:.0f} s -> {output}")
        return output

    def command(self, *args: str) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if self.config.threads:
            env.update(OMP_NUM_THREADS=str(self.config.threads), MKL_NUM_THREADS=str(self.config.threads))
        log_file = self.work / "logs" / f"{len(list((self.work / 'logs').glob('*.log'))):02d}_{Path(args[0]).stem}.log"
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(log_file, "w") as out:
            result = subprocess.run([sys.executable, *args], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        if result.returncode != 0:
            tail = log_file.read_text(errors="replace").strip().splitlines()[-5:]
            raise RuntimeError(f"{' '.join(args[:2])} failed (exit {result.returncode}); see {log_file}:\n"
                               + "\n".join(tail))

    def train(self, script: str, recipes: list[str], extra: list[str] = (), **keys) -> None:
        configs = [x for recipe in recipes for x in ("--config", str(REPO / recipe))]
        overrides = [f"{k}={dotlist_value(v if isinstance(v, (bool, int, float)) else str(v))}"
                     for k, v in keys.items()] + list(self.config.train_overrides) + list(extra)
        self.command(str(REPO / "scripts" / script), *configs, *overrides)

    def init_model(self, out: Path, method: str) -> Path:
        from colordiff.init_model import run_init_model

        run_init_model(str(out), tiny=False, base=str(self.work / "base"), dtype="float32", local_files_only=True,
                       seed=0, overwrite=False, method=method)
        return out

    # -- data -------------------------------------------------------------------------------------------------------
    def captions_file(self) -> Path:
        """The Des_g / Des_c captions of every training and held-out image (generated ones in photos/)."""
        generated = self.config.world_scenes or self.config.captions == "folder"
        return self.work / "photos" / "captions.jsonl" if generated else REPO / self.config.captions

    def prepare_world(self) -> None:
        """Generated scenes (colordiff/mini/world.py's prepare_world): training ones, held-out ones from another seed
        with their gray inputs, the captions of both and the held-out scenes' instance maps in photos/meta."""
        from colordiff.mini.world import prepare_world

        c, photos = self.config, self.work / "photos"
        train, held = prepare_world(photos, c.world_scenes, c.world_heldout, c.world_seed, c.world_heldout_seed,
                                    c.image_size)
        with atomic_write(photos / "done.json") as tmp:
            tmp.write_text(json.dumps({"train": [r["path"] for r in train], "heldout": [r["path"] for r in held]}))

    def prepare_photos(self) -> None:
        """Training photos (color only) and held-out ground truths + gray inputs, at the miniature's size, as PNG
        named by photo_names; the folder captions when captions is "folder"."""
        c = self.config
        train, held = list_photos(c.data_dir, c.heldout, heldout_every=c.heldout_every)
        names = photo_names(c.data_dir, photo_files(c.data_dir))
        write_photos(self.work / "photos", train, held, names, c.image_size)
        if c.captions == "folder":
            write_folder_captions(c.data_dir, self.captions_file())
        with atomic_write(self.work / "photos" / "done.json") as tmp:
            tmp.write_text(json.dumps({"train": [names[p] for p in train], "heldout": [names[p] for p in held]}))

    def prepare_test_set(self) -> None:
        """The second test set: every color photo of test_dir as ground truth (test/gt) and gray input (test/gray)."""
        photos, _ = list_photos(self.config.test_dir, [])
        names = photo_names(self.config.test_dir, photo_files(self.config.test_dir))
        write_photos(self.work / "test", [], photos, names, self.config.image_size)
        with atomic_write(self.work / "test" / "done.json") as tmp:
            tmp.write_text(json.dumps({"test": [names[p] for p in photos]}))

    # -- the phases -------------------------------------------------------------------------------------------------
    def run(self) -> dict:
        c, w = self.config, self.work
        self.phase("photos", w / "photos" / "done.json", self.prepare_world if c.world_scenes else self.prepare_photos)
        if c.test_dir:
            self.phase("test photos", w / "test" / "done.json", self.prepare_test_set)
        base_keys = [f"data_dir={dotlist_value(str(w / 'photos' / 'train'))}", "heldout=[]",
                     f"output_dir={dotlist_value(str(w / 'base'))}", f"image_size={c.image_size}",
                     f"captions={dotlist_value(str(self.captions_file()))}",
                     f"heldout_dir={dotlist_value(str(w / 'photos' / 'gt'))}"]
        base_configs = [x for f in c.base_config for x in ("--config", str(REPO / f))]
        self.phase("base", w / "base", lambda: self.command(
            str(REPO / "scripts" / "make_mini_base.py"), *base_configs, *base_keys, *c.base_overrides))
        data = {"train_data_dir": w / "photos" / "train", "caption_file": self.captions_file(),
                "local_files_only": True}
        models = {}
        if c.colordiff:
            models.update(self.run_colordiff(data))
        if c.seada:
            models.update(self.run_seada(data))
        from colordiff.mini.report import report

        return report(self, models)

    def run_colordiff(self, data: dict) -> dict[str, Path]:
        w = self.work
        init = self.phase("colordiff init-model", w / "colordiff_init",
                          lambda: self.init_model(w / "colordiff_init", "colordiff"))
        if self.config.latents_cache:
            self.phase("precompute_latents", w / "latents" / "index.json", lambda: self.train(
                "precompute_latents.py", self.config.unet_recipe, pretrained_model_name_or_path=init,
                output_dir=w / "latents_run", latents_cache=w / "latents", **data))
        cache = {"latents_cache": w / "latents"} if self.config.latents_cache else {}
        self.phase("train_unet (Eq.2)", w / "unet" / "model", lambda: self.train(
            "train_unet.py", self.config.unet_recipe, pretrained_model_name_or_path=init, output_dir=w / "unet",
            **data, **cache))
        self.phase("train_decoder (Eq.7)", w / "decoder" / "model", lambda: self.train(
            "train_decoder.py", self.config.decoder_recipe, pretrained_model_name_or_path=init,
            output_dir=w / "decoder", **data))
        from colordiff.pipelines.assemble import merge_decoder

        self.phase("merge-decoder", w / "colordiff", lambda: merge_decoder(
            w / "unet" / "model", w / "decoder" / "model", w / "colordiff", local_files_only=True))
        return {"untrained": init, "unet_only": w / "unet" / "model", "unet_decoder": w / "colordiff"}

    def run_seada(self, data: dict) -> dict[str, Path]:
        """Stage 0 from the base, then I, II, III in order; and Table 2's "stage II only" (II straight after 0)."""
        w, recipes = self.work, self.config.seada_recipes
        init = self.phase("seada init-model", w / "seada_init", lambda: self.init_model(w / "seada_init", "seada"))
        runs = [("seada_stage0", 0, init), ("seada_stage1", 1, w / "seada_stage0" / "model"),
                ("seada_stage2", 2, w / "seada_stage1" / "model"), ("seada_stage3", 3, w / "seada_stage2" / "model"),
                ("seada_stage2_only", 2, w / "seada_stage0" / "model")]
        for name, stage, start in runs:
            self.phase(f"train_seada stage {stage} ({name})", w / name / "model", lambda name=name, stage=stage,
                       start=start: self.train("train_seada.py", [paper_recipe(recipes[stage]), recipes[stage]],
                                               self.config.seada_overrides, pretrained_model_name_or_path=start,
                                               output_dir=w / name, **data))
        return {"seada_ii": w / "seada_stage2_only" / "model", "seada_i_ii": w / "seada_stage2" / "model",
                "seada_i_ii_iii": w / "seada_stage3" / "model"}


def write_photos(folder: Path, train: list[Path], held: list[Path], names: dict[Path, str], size: int) -> None:
    """folder/train/<name>.png for the training photos; folder/gt/<name>.png and its gray input folder/gray/<name>.png
    for the held-out ones; every photo at shorter side `size`."""
    from colordiff.color import rgb_to_gray

    for kind, files in (("train", train), ("gt", held)):
        for path in files:
            rgb = load_photo(path, size)  # (3, h, w)
            write_image(folder / kind / f"{names[path]}.png", rgb.permute(1, 2, 0).numpy())
            if kind == "gt":
                write_image(folder / "gray" / f"{names[path]}.png", rgb_to_gray(rgb).permute(1, 2, 0).numpy())


def check_config(config: LabConfig) -> None:
    """Usage errors up front: no data, or a second test set that overlaps the training data."""
    if config.data_dir in ("", "???") and not config.world_scenes:
        raise ConfigError("data_dir is required (a folder of color photos), or world_scenes > 0")
    if config.test_dir and not config.world_scenes:
        data, test = Path(config.data_dir).resolve(), Path(config.test_dir).resolve()
        if data == test or data in test.parents or test in data.parents:
            raise ConfigError(f"test_dir {config.test_dir} overlaps data_dir {config.data_dir}: the second test set "
                              "must be photos never trained on (set test_dir='' to leave it out)")
    if config.mean_samples < 0 or config.heldout_every < 0:
        raise ConfigError("mean_samples and heldout_every must be 0 or more")


def main(config: LabConfig) -> Path:
    check_config(config)
    torch.set_num_threads(config.threads or torch.get_num_threads())
    lab = MiniatureRun(config)
    lab.run()
    lab.log(f"total {time.time() - lab.start:.0f} s; table: {lab.work / 'table.md'}, grid: {lab.work / 'grid.png'}")
    print((lab.work / "table.md").read_text())
    return lab.work / "table.md"

