"""One command that checks and measures everything that needs a GPU: OUT/gpu_check.json and a summary OUT/gpu_check.md.

    python scripts/gpu_check.py                          # a CUDA machine: SD1.5-shaped random weights, bf16, 512 px
    python scripts/gpu_check.py --device cpu --tiny      # dry mode: the same sections with tiny models, on the CPU

Sections, in this order. Each is timed; a failing one is recorded and the next one runs; one that no longer fits in
--budget-s (8 minutes) is skipped and named (run it alone with --only NAME). The reports are rewritten after each.
  environment  torch, CUDA, the GPU, bf16 support, package versions
  models       SD1.5-shaped random weights built here (colordiff.testing: nothing downloads), saved as a Stable
               Diffusion folder and made into ColorDiff and SeAda model folders by `colordiff init-model --base`
               (the dry mode: `init-model --tiny`); the attention processor the U-Net gets (SDPA: AttnProcessor2_0)
  training     every training script through `accelerate launch`, in bf16 with validation, at the recipe's resolution:
               train_unet.py, train_unet.py with a LoRA, train_decoder.py, train_seada.py stages 0-III, distill.py.
               A first launch runs half of --train-steps and checkpoints; a second launch resumes from that
               checkpoint to the end. Checked: the resume line, one finite loss per step (2 gradient-accumulation
               micro-batches each), both validation grids, the exported model. --jobs scripts share the GPU at once.
  colorize     `colordiff colorize` of 16 photos at 512 px in one batch (bf16, SDPA): s/img, peak GPU memory, every
               output at its input's size with the input's exact L
  video        `colordiff colorize-video` of a 2 s camera pan: frames/s, peak GPU memory, every frame written
  demo         the web app's colorize function (colordiff.demo.core.Colorizer.start) on one photo
  gpu_tests    the tests marked `gpu` (pytest -m gpu), which skip themselves without CUDA
  benchmarks   scripts/benchmark.py's GPU measurements: configs/benchmark/gpu.yaml (pipeline vs img2img at batch 1
               and 16), train_gpu.yaml, mode=seada at SD1.5 sizes, guidance.yaml: s/img, img/s, peak GPU memory

Choices: each SeAda stage starts from the untrained SeAda folder (not from the previous stage's output), so the stages
run as independent lanes; the decoder trains with random LPIPS weights (perceptual_weights=random); the training
images are generated (colordiff.testing.write_captioned_images) and the photos are examples/photos. Nothing is
downloaded (HF_HUB_OFFLINE=1).

Needs only what `pip install -e ".[dev,demo]" -c constraints.txt` installs. A bare GPU machine (Python and the NVIDIA
driver) lacks all of: torch and torchvision (the PyPI wheels bring their CUDA libraries), diffusers, transformers,
accelerate, peft, av (PyAV, with its own FFmpeg: no ffmpeg binary needed), opencv-python-headless, lpips, gradio (the
demo section; no browser needed) and pytest (the gpu_tests section).

Disk under --work-dir: about 50 GB free with --jobs 2, about 40 GB with --jobs 1 (the two model folders take 10 GB; a
full U-Net checkpoint with its AdamW state is 10 GB, and a resumed run holds two until the older one is rotated out;
each script's folder is removed once checked). Planned time on one H100, not measured yet: models 1 min, training
3-4 min, colorize + video + demo 1 min, benchmarks 2-3 min; whatever does not fit in the budget is skipped and named,
and `--only benchmarks` (which builds its own weights) measures the rest in about 3 minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import math
import os
import platform
import runpy
import shutil
import subprocess
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
PHOTOS = sorted((REPO / "examples" / "photos").glob("*.jpg"))
SECTIONS = ("environment", "models", "training", "colorize", "video", "demo", "gpu_tests", "benchmarks")
USES_MODELS = {"training", "colorize", "video", "demo"}
GPU_TEST_FILES = ("tests/test_gpu.py", "tests/test_placement.py")


@dataclass(frozen=True)
class Profile:
    """The sizes of a run: SD1.5's on a GPU, or the dry mode's tiny ones."""

    resolution: int  # training, colorize, video and demo working size
    train_steps: int  # per training script: the first launch runs half of them, the resumed one the rest
    train_batch: int  # per micro-batch (2 micro-batches per step)
    validation_steps: int
    colorize_steps: int  # sampling steps of colorize, colorize-video and the demo
    video_size: tuple[int, int]  # (width, height)
    video_fps: int
    dtype: str  # colorize, video, demo and benchmarks (training always runs in bf16 mixed precision)
    benchmarks: dict[str, tuple[list[str], list[str]]]  # name -> (configs/benchmark files, key=value overrides)
    min_section_s: float  # a section starts only with this much of the budget left


GPU = Profile(
    resolution=512, train_steps=20, train_batch=2, validation_steps=4, colorize_steps=50, video_size=(640, 360),
    video_fps=25, dtype="bfloat16", min_section_s=20,
    benchmarks={"pipelines": (["gpu.yaml"], ["repeats=2"]),
                "train": (["train_gpu.yaml"], ["warmup=2", "repeats=5"]),
                "seada": ([], ["mode=seada", "model_size=sd15", "dtype=bfloat16", "resolution=512", "steps=50",
                               "repeats=2"]),
                "guidance": (["gpu.yaml", "guidance.yaml"], ["repeats=2"])})
TINY = Profile(
    resolution=64, train_steps=2, train_batch=1, validation_steps=2, colorize_steps=2, video_size=(96, 64),
    video_fps=4, dtype="float32", min_section_s=0,  # bf16 matmuls are emulated, 4x slower, on most CPUs
    benchmarks={"pipelines": ([], ["resolution=64", "steps=1", "batch_sizes=[1,2]", "warmup=0", "repeats=1"]),
                "train": ([], ["mode=train", "resolution=64", "train_batch_size=1", "warmup=0", "repeats=1"]),
                "seada": ([], ["mode=seada", "resolution=64", "train_batch_size=1", "steps=1", "warmup=0",
                               "repeats=1"]),
                "guidance": ([], ["mode=guidance", "resolution=64", "steps=2", "instance_counts=[0,2]",
                                  "batch_sizes=[1]", "warmup=0", "repeats=1", "prior_images=1"])})


@dataclass(frozen=True)
class Lane:
    """One training script with its paper recipe, run twice (to a checkpoint, then resumed)."""

    name: str
    script: str
    recipe: str  # under configs/
    model: str  # colordiff | seada: the untrained folder it starts from
    overrides: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ("model/model_index.json",)  # files the finished run must have written


LANES = (  # the two largest checkpoints (U-Net, distillation: 10 and 14 GB) far apart: they rarely share the disk
    Lane("unet", "train_unet.py", "colordiff/unet.yaml", "colordiff"),
    Lane("seada_stage0", "train_seada.py", "seada/stage0.yaml", "seada"),
    Lane("seada_stage2", "train_seada.py", "seada/stage2.yaml", "seada"),
    Lane("seada_stage3", "train_seada.py", "seada/stage3.yaml", "seada"),
    Lane("distill", "distill.py", "colordiff/distill_lcm.yaml", "colordiff"),
    Lane("decoder", "train_decoder.py", "colordiff/decoder.yaml", "colordiff", ("perceptual_weights=random",)),
    Lane("seada_stage1", "train_seada.py", "seada/stage1.yaml", "seada"),
    Lane("unet_lora", "train_unet.py", "colordiff/unet.yaml", "colordiff", ("lora_rank=8", "learning_rate=1.0e-4"),
         ("model/model_index.json", "lora/pytorch_lora_weights.safetensors")),
)


@dataclass
class Check:
    """A run's settings, folders, deadline, model folders and results so far."""

    args: argparse.Namespace
    profile: Profile
    device: torch.device
    out: Path  # the reports and logs/ (kept)
    work: Path  # models, data, checkpoints, outputs (removed at the end unless --keep)
    deadline: float
    started: float = field(default_factory=time.monotonic)
    models: dict[str, Path] = field(default_factory=dict)
    results: dict[str, dict] = field(default_factory=dict)

    @property
    def in_process(self) -> bool:
        """The dry mode runs the scripts in this process: an interpreter start per launch would cost minutes."""
        return self.args.tiny and self.device.type == "cpu"

    @property
    def logs(self) -> Path:
        return self.out / "logs"

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def cli(self, *argv: str) -> int:
        """`colordiff ARGV` in this process, its output appended to OUT/logs/cli.log."""
        from colordiff.cli import main

        with (self.logs / "cli.log").open("a") as log, contextlib.redirect_stdout(log), \
                contextlib.redirect_stderr(log):
            return main(list(argv))


# -- running sections -----------------------------------------------------------------------------------------------
def run_section(check: Check, name: str, fn) -> None:
    """Run one section: its result (a dict with a one-line "summary"), "ok", and its seconds; never raises."""
    if check.left() < check.profile.min_section_s:
        check.results[name] = {"ok": False, "skipped": "the time budget is spent", "seconds": 0.0}
        return
    start = time.monotonic()
    try:
        result = fn(check)
    except Exception as err:  # noqa: BLE001 - a failing section is recorded and the next one runs
        result = {"ok": False, "error": f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err) else ''}",
                  "traceback": traceback.format_exc()[-4000:]}
    result.setdefault("ok", True)
    check.results[name] = {**result, "seconds": round(time.monotonic() - start, 2)}
    print(f"gpu_check: {name}: {'ok' if result['ok'] else 'FAILED'} ({check.results[name]['seconds']:.1f} s) "
          f"{result.get('summary', result.get('error', ''))}", flush=True)
    write_reports(check)


def measured(fn, device: torch.device):
    """(fn(), wall seconds, peak GPU memory in GiB or None on the CPU), the device idle at both ends."""
    from colordiff.devices import synchronize

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    start = time.perf_counter()
    value = fn()
    synchronize(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return value, seconds, peak


def gib(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} GiB"


# -- sections -------------------------------------------------------------------------------------------------------
def environment(check: Check) -> dict:
    import accelerate
    import diffusers
    import transformers

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "diffusers": diffusers.__version__, "transformers": transformers.__version__,
            "accelerate": accelerate.__version__, "cpu_threads": torch.get_num_threads(),
            "sdpa": hasattr(torch.nn.functional, "scaled_dot_product_attention")}
    if check.device.type == "cuda":
        props = torch.cuda.get_device_properties(check.device)
        info.update(gpu=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}", bf16=torch.cuda.is_bf16_supported(),
                    flash_sdp=torch.backends.cuda.flash_sdp_enabled(),
                    mem_efficient_sdp=torch.backends.cuda.mem_efficient_sdp_enabled())
    where = info.get("gpu", f"CPU (torch threads: {info['cpu_threads']})")
    return {**info, "ok": check.device.type != "cuda" or info["bf16"],
            "summary": f"{where}, torch {info['torch']} (CUDA {info['cuda']}), diffusers {info['diffusers']}"}


def build_models(check: Check) -> dict:
    """ColorDiff and SeAda model folders through init-model: from SD1.5-shaped random weights saved as a Stable
    Diffusion folder (as from the real SD1.5 weights), or tiny random ones in the dry mode."""
    from colordiff.testing import sd15_shaped_stable_diffusion, tiny_unet

    root = check.work / "models"
    root.mkdir(parents=True, exist_ok=True)
    if check.args.tiny:
        unet = tiny_unet()
        for method in ("colordiff", "seada"):
            _init_model(check, root / method, "--tiny", "--method", method)
    else:
        sd = sd15_shaped_stable_diffusion()
        unet = sd.unet
        sd.save_pretrained(root / "sd15", safe_serialization=True)
        del sd
        for method in ("colordiff", "seada"):
            _init_model(check, root / method, "--base", str(root / "sd15"), "--method", method, "--local-files-only")
        shutil.rmtree(root / "sd15")  # the training runs need the disk
    check.models = {method: root / method for method in ("colordiff", "seada")}
    processors = sorted({type(p).__name__ for p in unet.attn_processors.values()})
    sizes = {m: round(sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) / 2**30, 2)
             for m, p in check.models.items()}
    parameters = sum(p.numel() for p in unet.parameters())
    return {"unet_parameters": parameters, "attention_processors": processors, "folder_gib": sizes,
            "ok": processors == ["AttnProcessor2_0"],
            "summary": f"U-Net {parameters / 1e6:.1f}M parameters, attention {'/'.join(processors)}, "
                       f"folders {sizes} GiB"}


def _init_model(check: Check, folder: Path, *options: str) -> None:
    code = check.cli("init-model", str(folder), "--overwrite", *options)
    if code != 0:
        raise RuntimeError(f"colordiff init-model {' '.join(options)} exited {code} (see {check.logs / 'cli.log'})")


def _needs_models(check: Check) -> None:
    if not check.models:
        raise RuntimeError("no model folders: the models section failed or did not run")


# -- training -------------------------------------------------------------------------------------------------------
def training(check: Check) -> dict:
    """Every lane (two launches each), --jobs at a time on the GPU, one at a time in the dry mode."""
    from colordiff.testing import write_captioned_images

    _needs_models(check)
    size = check.profile.resolution
    data = write_captioned_images(_fresh(check.work / "train_data"), 8, size, size)
    jobs = 1 if check.in_process else check.args.jobs
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        lanes = dict(zip([lane.name for lane in LANES], pool.map(lambda lane: run_lane(check, lane, data), LANES),
                         strict=True))
    bad = [name for name, lane in lanes.items() if not lane["ok"]]
    slowest = max(lanes.items(), key=lambda item: sum(leg["seconds"] for leg in item[1]["launches"]))
    return {"ok": not bad, "lanes": lanes, "jobs": jobs,
            "summary": (f"{len(lanes) - len(bad)}/{len(lanes)} scripts trained, checkpointed and resumed"
                        + (f"; failed: {', '.join(bad)}" if bad else "") + f"; slowest {slowest[0]}")}


def _fresh(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def lane_arguments(check: Check, lane: Lane, output: Path, data: Path, steps: int) -> list[str]:
    """The script's command line: its paper recipe, then the check's sizes, data, folders and step counts."""
    p, half = check.profile, check.profile.train_steps // 2
    settings = {"pretrained_model_name_or_path": check.models[lane.model], "local_files_only": "true",
                "output_dir": output, "train_data_dir": data, "text_source": "captions",
                "caption_file": data / "captions.jsonl", "resolution": p.resolution, "train_batch_size": p.train_batch,
                "gradient_accumulation_steps": 2, "max_train_steps": steps, "checkpointing_steps": half,
                "checkpoints_total_limit": 1, "resume_from_checkpoint": "latest", "validation_steps": half,
                "validation_images": f"[{PHOTOS[0]}]", "validation_inference_steps": p.validation_steps,
                "mixed_precision": "bf16", "report_to": "none", "dataloader_num_workers": 0}
    return ["--config", str(CONFIGS / lane.recipe), *(f"{k}={v}" for k, v in settings.items()), *lane.overrides]


def run_lane(check: Check, lane: Lane, data: Path) -> dict:
    """Launch a script to half its steps (checkpoint there), then again to resume it to the end; check the run."""
    output = _fresh(check.work / "train" / lane.name)
    launches = []
    for steps in (check.profile.train_steps // 2, check.profile.train_steps):
        if check.left() <= 0:
            break
        log = check.logs / f"train_{lane.name}.{len(launches) + 1}.log"
        launches.append(launch(check, lane.script, lane_arguments(check, lane, output, data, steps), log))
        if launches[-1]["returncode"] != 0:
            break
    problems = lane_problems(check, lane, output, launches)
    rows = _read_rows(output / "train_log.jsonl")
    if not check.args.keep:
        shutil.rmtree(output, ignore_errors=True)  # checkpoints are large: the disk is needed by the next lane
    return {"ok": not problems, "problems": problems, "launches": launches,
            "losses": [row["loss"] for row in rows]}


def launch(check: Check, script: str, arguments: list[str], log: Path) -> dict:
    """One `accelerate launch` of a training script (in this process in the dry mode), its output in `log`."""
    path = REPO / "scripts" / script
    start = time.monotonic()
    if check.in_process:
        code = _run_script_here(path, arguments, log)
    else:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
                   "--mixed_precision", "bf16", "--dynamo_backend", "no", str(path), *arguments]
        with log.open("w") as out:
            try:
                code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                      timeout=max(1.0, check.left())).returncode
            except subprocess.TimeoutExpired:
                code = "timed out (time budget)"
    return {"returncode": code, "seconds": round(time.monotonic() - start, 2), "log": str(log)}


def _run_script_here(path: Path, arguments: list[str], log: Path) -> int:
    """A script's `__main__` in this process with `arguments`, its output to `log`; accelerate's process-wide state
    is reset afterwards, as a new process would start."""
    from accelerate.state import AcceleratorState, GradientState

    argv, sys.argv = sys.argv, [str(path), *arguments]
    try:
        with log.open("w") as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            try:
                runpy.run_path(str(path), run_name="__main__")
                return 0
            except SystemExit as exit_:
                return exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
            except Exception:  # noqa: BLE001 - a crash is this launch's failure, with its traceback in the log
                traceback.print_exc()
                return 1
    finally:
        sys.argv = argv
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def _read_rows(path: Path) -> list[dict]:
    from colordiff.training.checkpoint import read_log

    return read_log(path)


def lane_problems(check: Check, lane: Lane, output: Path, launches: list[dict]) -> list[str]:
    """What is wrong with a lane's two launches and what they wrote (empty: nothing)."""
    steps, half = check.profile.train_steps, check.profile.train_steps // 2
    failed = [leg for leg in launches if leg["returncode"] != 0]
    if failed or len(launches) < 2:
        tail = Path(failed[0]["log"]).read_text()[-1500:] if failed else ""
        return [f"launch {len(launches)} exited {failed[0]['returncode']}: ...{tail}" if failed
                else "the time budget ran out before the resumed launch"]
    problems = []
    if f"resumed from checkpoint-{half} at step {half}" not in Path(launches[1]["log"]).read_text():
        problems.append(f"the second launch did not resume from checkpoint-{half}")
    rows = _read_rows(output / "train_log.jsonl")
    if [row["step"] for row in rows] != list(range(1, steps + 1)):
        problems.append(f"train_log.jsonl has steps {[row['step'] for row in rows]}, not 1..{steps}")
    if not all(math.isfinite(row["loss"]) for row in rows):
        problems.append(f"non-finite losses: {[row['loss'] for row in rows]}")
    expected = [f"validation/step-{s:07d}.png" for s in (half, steps)] + list(lane.outputs)
    problems += [f"{name} was not written" for name in expected if not (output / name).is_file()]
    return problems


# -- colorize, video, demo ------------------------------------------------------------------------------------------
def make_photos(folder: Path, count: int, size: int) -> list[Path]:
    """`count` square photos of side `size` (PNG): crops of examples/photos from the left, centre and right, and
    mirrored."""
    _fresh(folder)
    paths = []
    for i in range(count):
        image = Image.open(PHOTOS[i % len(PHOTOS)]).convert("RGB")
        side, where = min(image.size), (i // len(PHOTOS)) % 4
        left = [0, (image.width - side) // 2, image.width - side, (image.width - side) // 2][where]
        square = image.crop((left, 0, left + side, side)).resize((size, size), Image.BICUBIC)
        square = square.transpose(Image.FLIP_LEFT_RIGHT) if where == 3 else square
        paths.append(folder / f"photo{i:02d}.png")
        square.save(paths[-1])
    return paths


def luminance_error(source: Path, result: Path) -> float:
    """max |L_result - L_source| (Lab L in [0, 100]) of two same-size images."""
    from colordiff.color import rgb_to_luminance

    def lum(path: Path) -> torch.Tensor:
        rgb = torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255)
        return rgb_to_luminance(rgb.permute(2, 0, 1)[None])  # (1, 1, H, W)

    return (lum(result) - lum(source)).abs().max().item()


def colorize(check: Check) -> dict:
    """16 photos through `colordiff colorize` as one batch (bf16); each output keeps its input's size and L."""
    _needs_models(check)
    p, count = check.profile, 16
    photos = make_photos(check.work / "photos", count, p.resolution)
    out = check.work / "colorized"
    code, seconds, peak = measured(lambda: check.cli(
        "colorize", str(photos[0].parent), "-o", str(out), "--model", str(check.models["colordiff"]),
        "--steps", str(p.colorize_steps), "--resolution", str(p.resolution), "--batch-size", str(count),
        "--device", str(check.device), "--dtype", p.dtype, "--local-files-only", "--overwrite"), check.device)
    results = [out / photo.name for photo in photos]
    written = [r for r in results if r.is_file()]
    same_size = all(Image.open(r).size == Image.open(s).size for r, s in zip(results, photos, strict=True)
                    if r.is_file())
    error = max((luminance_error(s, r) for r, s in zip(results, photos, strict=True) if r.is_file()), default=math.inf)
    return {"ok": code == 0 and len(written) == count and same_size and error < 1.0, "exit_status": code,
            "images": count, "written": len(written), "run_seconds": seconds, "s_per_image": seconds / count,
            "peak_memory_gib": peak, "max_abs_delta_L": error,
            "summary": f"{len(written)}/{count} photos, {seconds / count:.3f} s/img (model loading included), "
                       f"peak {gib(peak)}, max |dL| {error:.2f}"}


def video(check: Check) -> dict:
    """A 2 s camera pan over a photo through `colordiff colorize-video`: every frame written, at its size."""
    import av

    from colordiff.video.synthetic import camera_frames, write_clip

    _needs_models(check)
    p = check.profile
    frames = 2 * p.video_fps
    photo = np.asarray(Image.open(PHOTOS[0]).convert("RGB"))
    clip = write_clip(_fresh(check.work / "video") / "pan.mp4", camera_frames(photo, p.video_size, frames, "pan"),
                      rate=p.video_fps)
    out = check.work / "video_out"
    code, seconds, peak = measured(lambda: check.cli(
        "colorize-video", str(clip), "-o", str(out), "--model", str(check.models["colordiff"]),
        "--steps", str(p.colorize_steps), "--resolution", str(p.resolution), "--device", str(check.device),
        "--dtype", p.dtype, "--local-files-only", "--overwrite"), check.device)
    written, size = 0, None
    if (out / "pan.mp4").is_file():
        with av.open(str(out / "pan.mp4")) as container:
            for frame in container.decode(video=0):
                written, size = written + 1, (frame.width, frame.height)
    return {"ok": code == 0 and written == frames and size == p.video_size, "exit_status": code, "frames": frames,
            "written": written, "run_seconds": seconds, "frames_per_s": frames / seconds, "peak_memory_gib": peak,
            "summary": f"{written}/{frames} frames of {p.video_size[0]}x{p.video_size[1]}, "
                       f"{frames / seconds:.2f} frames/s (model loading included), peak {gib(peak)}"}


def demo(check: Check) -> dict:
    """The web app's colorize function (what the Colorize button runs) on one photo, bf16 on the device."""
    from colordiff.demo.core import Colorizer, DemoConfig

    _needs_models(check)
    p = check.profile
    config = DemoConfig(model=str(check.models["colordiff"]), device=str(check.device), dtype=p.dtype,
                        steps=p.colorize_steps, resolution=p.resolution, local_files_only=True)
    colorizer = Colorizer(config, check.work / "demo")
    photo = PHOTOS[0]
    session, seconds, peak = measured(lambda: colorizer.start([str(photo)], config), check.device)
    result = session.uploads[0].results[0]
    expected = Image.open(photo).size
    return {"ok": result.size == expected, "run_seconds": seconds, "peak_memory_gib": peak, "size": list(result.size),
            "summary": f"{photo.name} {result.size[0]}x{result.size[1]} in {seconds:.2f} s, peak {gib(peak)}"}


def gpu_tests(check: Check) -> dict:
    """pytest -m gpu on the files that hold such tests (in a fresh process: they need the GPU to themselves)."""
    if check.device.type != "cuda":
        return {"skipped": "no CUDA device", "summary": "not run: the tests marked gpu need CUDA"}
    run = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                          *GPU_TEST_FILES], cwd=REPO, capture_output=True, text=True, timeout=max(1.0, check.left()))
    last = (run.stdout.strip().splitlines() or [""])[-1]
    return {"ok": run.returncode == 0, "exit_status": run.returncode, "summary": last,
            "output": run.stdout[-3000:] if run.returncode else ""}


# -- benchmarks -----------------------------------------------------------------------------------------------------
def load_benchmark_script():
    spec = importlib.util.spec_from_file_location("colordiff_benchmark_script", REPO / "scripts" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def numbers_finite(value) -> bool:
    """Every float in a nested result is finite."""
    if isinstance(value, dict):
        return all(numbers_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return all(numbers_finite(v) for v in value)
    return not isinstance(value, float) or math.isfinite(value)


def benchmark_summary(name: str, result: dict) -> str:
    """The numbers BENCHMARKS.md waits for, on one line."""
    if name == "pipelines":
        return "; ".join(f"batch {r['batch_size']}: {r['ours_s_per_image']:.3f} s/img, ratio {r['ratio']:.3f}"
                         for r in result["runs"])
    if name == "train":
        steps = result["train_steps"]
        return "; ".join(f"{k} {v['images_per_s']:.1f} img/s {gib(v['peak_memory_gib'])}" for k, v in steps.items())
    if name == "seada":
        training = {k: v for k, v in result["training"].items() if k.endswith("ratio_vs_controlnet")}
        return (f"inference ratio {result['inference']['ratio']:.3f}; training ratios "
                + ", ".join(f"{v:.2f}" for v in training.values()))
    return "; ".join(f"{r['instances']} instances {r['s_per_image']:.3f} s/img" for r in result["runs"])


def benchmarks(check: Check) -> dict:
    """scripts/benchmark.py's measurements in this process, one after the other, each with its peak GPU memory."""
    from colordiff.config import load_config

    script = load_benchmark_script()
    results, skipped = {}, []
    for name, (files, overrides) in check.profile.benchmarks.items():
        if check.left() < check.profile.min_section_s:
            skipped.append(name)
            continue
        config = load_config(script.BenchmarkConfig, [CONFIGS / "benchmark" / f for f in files],
                             [*overrides, f"device={check.device}"])
        with (check.logs / f"benchmark_{name}.log").open("w") as log, contextlib.redirect_stdout(log):
            result, seconds, peak = measured(lambda config=config: script.run(config), check.device)
        results[name] = {**result, "run_seconds": seconds, "peak_memory_gib": peak,
                         "summary": benchmark_summary(name, result)}
    finite = numbers_finite(results)
    return {"ok": finite and not skipped, "benchmarks": results, "skipped": skipped,
            "summary": " | ".join(f"{k}: {v['summary']}" for k, v in results.items())
                       + (f" | skipped (time budget): {', '.join(skipped)}" if skipped else "")}


# -- reports --------------------------------------------------------------------------------------------------------
def write_reports(check: Check) -> dict:
    """OUT/gpu_check.json (everything) and OUT/gpu_check.md (a table of the sections and their key numbers)."""
    from colordiff.io import atomic_write

    report = {"ok": all(r["ok"] for r in check.results.values()), "device": str(check.device),
              "tiny": check.args.tiny, "budget_s": check.args.budget_s,
              "seconds": round(time.monotonic() - check.started, 2), "sections": check.results}
    check.out.mkdir(parents=True, exist_ok=True)
    with atomic_write(check.out / "gpu_check.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2, default=str))
    with atomic_write(check.out / "gpu_check.md") as tmp:
        tmp.write_text(markdown(report))
    return report


def markdown(report: dict) -> str:
    where = report["sections"].get("environment", {}).get("summary", report["device"])
    lines = [f"# GPU check: {'all passed' if report['ok'] else 'FAILURES'}", "",
             f"{where}; {'tiny models (dry mode)' if report['tiny'] else 'SD1.5-shaped random weights'}, "
             f"{report['seconds']:.0f} s of a {report['budget_s']:.0f} s budget. Details: gpu_check.json.", "",
             "| section | result | seconds | numbers |", "|---|---|---:|---|"]
    for name, result in report["sections"].items():
        state = "not run" if result.get("skipped") else ("ok" if result["ok"] else "FAILED")
        text = (result.get("summary") or result.get("skipped") or result.get("error", "")).replace("|", "\\|")
        lines.append(f"| {name} | {state} | {result['seconds']:.1f} | {text} |")
    lanes = report["sections"].get("training", {}).get("lanes", {})
    if lanes:
        lines += ["", "| training script | result | launch seconds | losses |", "|---|---|---|---|"]
        for name, lane in lanes.items():
            seconds = " + ".join(f"{leg['seconds']:.1f}" for leg in lane["launches"])
            losses = ", ".join(f"{x:.4f}" for x in lane["losses"])
            lines.append(f"| {name} | {'ok' if lane['ok'] else 'FAILED: ' + '; '.join(lane['problems'])[:300]} "
                         f"| {seconds} | {losses} |")
    failures = [f"- {name}: {r.get('error')}" for name, r in report["sections"].items() if r.get("error")]
    return "\n".join(lines + (["", "## Errors", *failures] if failures else [])) + "\n"


# -- main -----------------------------------------------------------------------------------------------------------
SECTION_FUNCTIONS = {"environment": environment, "models": build_models, "training": training, "colorize": colorize,
                     "video": video, "demo": demo, "gpu_tests": gpu_tests, "benchmarks": benchmarks}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (the dry mode) (default: cuda)")
    parser.add_argument("--tiny", action="store_true", help="tiny random models and sizes (the dry mode)")
    parser.add_argument("--out", default="outputs/gpu_check", help="report folder (default: outputs/gpu_check)")
    parser.add_argument("--work-dir", help="where WORK_DIR/gpu_check_work holds the models, checkpoints and outputs "
                        "(removed at the end unless --keep) (default: OUT)")
    parser.add_argument("--budget-s", type=float, default=480.0, help="wall-clock budget in seconds (default: 480)")
    parser.add_argument("--jobs", type=int, default=2, help="training scripts at once on the GPU (default: 2)")
    parser.add_argument("--only", action="append", choices=SECTIONS, help="run only these sections (repeatable; "
                        "models runs too when a chosen section needs it)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (models, checkpoints, outputs)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the sections; exit status 0 when every one passed, 1 when one failed or was skipped, 2 on bad usage."""
    args = parse(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: error: no CUDA device here; the dry mode is --device cpu --tiny", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded
    out = Path(args.out).resolve()
    work = (Path(args.work_dir).resolve() if args.work_dir else out) / "gpu_check_work"  # a folder of its own
    check = Check(args, TINY if args.tiny else GPU, device, out, _fresh(work), time.monotonic() + args.budget_s)
    _fresh(check.logs)
    if check.in_process:
        torch.set_num_threads(1)  # tiny models gain nothing from threads; on a busy CPU they cost several times over
    chosen = set(args.only or SECTIONS)
    if chosen & USES_MODELS:
        chosen.add("models")
    for name in SECTIONS:
        if name in chosen:
            run_section(check, name, SECTION_FUNCTIONS[name])
    report = write_reports(check)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print(f"gpu_check: {'all passed' if report['ok'] else 'FAILURES'} in {report['seconds']:.0f} s; "
          f"{out / 'gpu_check.md'}", flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
