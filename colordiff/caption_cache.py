"""Precompute captions of every image's grayscale and color versions into a JSONL cache (training's text input).

ColorDiff's text condition and SeAda's Des_g / Des_c (paper 001, Stage I) come from this cache. One line per image:
    {"path": "<key>", "caption_gray": "...", "caption_color": "...", "captioner": "<name>:<source>"}
with the keys of colordiff.data.list_images (path relative to data_dir, or the file list's line).

    python scripts/caption.py data_dir=/data/train output=captions.jsonl
    python scripts/caption.py --config configs/semantics/captions_seada.yaml data_dir=... output=...   # CoCa
    accelerate launch --num_processes 4 scripts/caption.py data_dir=... output=...   # every 4th image each

Resumable: images whose entry (same captioner, every version asked for) exists are skipped, so an interrupted run
goes on where it stopped. Each process appends finished lines to its own <output>.part<rank> (one write per line, a
torn last line from a crash is ignored); at the end the first process merges them into <output>, written atomically.
Unreadable images get one line each naming the file and the reason, and the run goes on; exit status 1 if any failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from colordiff.colorize_common import resolve_device_dtype
from colordiff.config import error_line, load_config
from colordiff.io import ImageReadError, atomic_write, read_image
from colordiff.semantics import CaptionerConfig, build_generator, grayscale

VERSIONS = ("gray", "color")


@dataclass
class CaptionConfig:
    output: str = "???"  # the JSONL cache (required)
    data_dir: str | None = None  # every image under it, or the root the file list's lines are relative to
    file_list: str | None = None  # one image path per line (# comments allowed)
    captioner: CaptionerConfig = field(default_factory=CaptionerConfig)  # BLIP; CoCa for SeAda (configs/semantics)
    versions: list[str] = field(default_factory=lambda: list(VERSIONS))  # which captions: gray, color
    device: str = "auto"  # auto: this process's accelerator, else cpu
    dtype: str = "auto"  # auto: bfloat16 on CUDA, float32 otherwise
    local_files_only: bool = False
    max_pixels: int = 100_000_000
    read_workers: int = 4


def read_cache(output: Path, parts: bool = True) -> tuple[dict[str, dict], int]:
    """{key: record} from <output> and its .part files (later lines win); also the count of unreadable lines."""
    records, torn = {}, 0
    for path in [output, *(sorted(output.parent.glob(f"{output.name}.part*")) if parts else [])]:
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
                key = record["path"]
            except (json.JSONDecodeError, KeyError, TypeError):
                torn += bool(line.strip())  # an interrupted write leaves a torn last line
                continue
            old = records.get(key)
            same = old is not None and old.get("captioner") == record.get("captioner")
            records[key] = {**old, **record} if same else record
    return records, torn


def merge_cache(output: Path) -> int:
    """Fold the .part files into <output> (atomic rewrite, keys sorted), then delete them; returns the entry count."""
    records, _ = read_cache(output)
    with atomic_write(output) as tmp:
        tmp.write_text("".join(json.dumps(records[k], ensure_ascii=False) + "\n" for k in sorted(records)),
                       encoding="utf-8")
    for part in output.parent.glob(f"{output.name}.part*"):
        part.unlink()
    return len(records)


def caption_shard(config: CaptionConfig, rank: int = 0, world: int = 1, device="cpu",
                  dtype=torch.float32) -> tuple[int, int, int]:
    """Caption this process's share (every world-th image still to do); returns (captioned, skipped, failed).

    What is "still to do" comes from <output> alone, never from .part files that other processes are writing:
    every process must see the same list to split it. (run() merges an earlier run's parts in first.)
    """
    from colordiff.data import list_images

    if set(config.versions) - set(VERSIONS) or not config.versions:
        raise ValueError(f"versions must be a non-empty subset of {list(VERSIONS)}, got {config.versions}")
    output = Path(config.output)
    identity = f"{config.captioner.name}:{config.captioner.source}"
    needed = {f"caption_{v}" for v in config.versions}
    cache, _ = read_cache(output, parts=False)
    items = list_images(config.data_dir, config.file_list)
    todo = [(path, key) for path, key in items
            if not (cache.get(key, {}).get("captioner") == identity and needed <= cache[key].keys())]
    mine = todo[rank::world]
    if not mine:
        return 0, len(items) - len(todo), 0
    captioner = build_generator(config.captioner, device=device, dtype=dtype, local_files_only=config.local_files_only)
    done = failed = 0
    output.parent.mkdir(parents=True, exist_ok=True)
    part = output.parent / f"{output.name}.part{rank}"
    with part.open("a", encoding="utf-8") as sink, ThreadPoolExecutor(config.read_workers) as pool, \
            tqdm(total=len(mine), unit="img", disable=rank != 0) as bar:
        if not _ends_cleanly(part):
            sink.write("\n")  # a crash left half a line: end it, so that it stays one bad line and ours parse
        for start in range(0, len(mine), config.captioner.batch_size):
            batch = mine[start : start + config.captioner.batch_size]
            futures = [pool.submit(read_image, path, config.max_pixels) for path, _ in batch]
            loaded = []
            for (_, key), future in zip(batch, futures, strict=True):
                try:
                    loaded.append((key, future.result().rgb))
                except ImageReadError as err:
                    tqdm.write(f"caption: {err}", file=sys.stderr)
                    failed += 1
            records = _caption_batch(captioner, loaded, config.versions, identity)
            for record in records:
                sink.write(json.dumps(record, ensure_ascii=False) + "\n")  # one write per line: append-safe
                sink.flush()
            done, failed = done + len(records), failed + len(loaded) - len(records)
            bar.update(len(batch))
    return done, len(items) - len(todo), failed


def _ends_cleanly(path: Path) -> bool:
    """Whether `path` is empty or ends with a newline."""
    with path.open("rb") as f:
        if f.seek(0, 2) == 0:
            return True
        f.seek(-1, 2)
        return f.read(1) == b"\n"


def _caption_batch(captioner, loaded: list, versions: list[str], identity: str) -> list[dict]:
    """The cache records of a batch of (key, rgb) images; a failing batch is reported per file and gives none."""
    images = [rgb for _, rgb in loaded]
    try:
        texts = {v: captioner(grayscale(images) if v == "gray" else images) for v in versions}  # batched per version
    except Exception as err:  # noqa: BLE001 - one failing batch must not stop the job
        for key, _ in loaded:
            tqdm.write(f"caption: {key}: captioning failed: {type(err).__name__}: {err}", file=sys.stderr)
        return []
    return [{"path": key, **{f"caption_{v}": texts[v][i] for v in versions}, "captioner": identity}
            for i, (key, _) in enumerate(loaded)]


def run_caption(config: CaptionConfig) -> int:
    """Caption every image of the set not yet in the cache (this process's share of them); the exit status."""
    from accelerate import PartialState

    on_cpu = config.device == "cpu" or (config.device == "auto" and not torch.cuda.is_available())
    state = PartialState(cpu=on_cpu)  # joins the processes of `accelerate launch`; a no-op alone
    device, dtype = resolve_device_dtype(config.device, config.dtype, state)
    output = Path(config.output)
    if state.is_main_process and list(output.parent.glob(f"{output.name}.part*")):
        merge_cache(output)  # an interrupted run's lines count as done for every process alike
    state.wait_for_everyone()
    done, skipped, failed = caption_shard(config, state.process_index, state.num_processes, device, dtype)
    state.wait_for_everyone()
    where = f" [process {state.process_index + 1}/{state.num_processes}]" if state.num_processes > 1 else ""
    print(f"caption: {done} captioned, {skipped} skipped (already done), {failed} failed{where}", file=sys.stderr)
    if state.is_main_process:
        print(f"caption: {merge_cache(output)} entries in {output}", file=sys.stderr)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    """scripts/caption.py: --config YAML files and key=value overrides of CaptionConfig; the exit status."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", default=[], help="YAML settings (repeatable)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of CaptionConfig")
    args = parser.parse_intermixed_args(argv)  # key=value overrides may come after flags
    try:
        config = load_config(CaptionConfig, args.config, args.overrides)
        return run_caption(config)
    except (ValueError, FileNotFoundError) as err:  # ConfigError and PriorGeneratorError are ValueErrors
        print(f"caption: error: {error_line(err)}", file=sys.stderr)
        return 2

