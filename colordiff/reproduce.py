"""Reproducing the papers' tables: preparing the evaluation sets, colorizing them, scoring them with
`colordiff.evaluate`, and rendering our rows beside the published ones (configs/eval/published/), with a comparison
grid. Table 1 runs add our method as a last row; ablation runs (configs/eval/ablations/, `row`) print ours under the
published row they reproduce, and rebuild the whole ablation table from their sibling runs.

scripts/prepare_eval.py and scripts/reproduce_tables.py are thin entry points over this module.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image
from tqdm.auto import tqdm

from colordiff.config import ConfigError, dotlist_value, load_config
from colordiff.errors import EXIT_FAILURES, EXIT_OK, EXIT_USAGE, UsageError
from colordiff.evaluate import (
    REPO,
    EvalConfig,
    MetricSettings,
    _report,
    run_evaluation,
    to_json,
    write_csv,
    write_text,
)
from colordiff.io import ImageReadError, is_image_path, write_image
from colordiff.protocol import Protocol, apply_protocol, check_protocol, examples, image_index, read_uint8


@dataclass
class EvalSetConfig:
    """One evaluation set and how to reproduce its table (configs/eval/<set>.yaml)."""

    name: str = "???"  # key of the set in the published tables: imagenet_val5k | cocostuff_val | ade20k_val
    dataset: str = ""  # display name
    source: str | None = None  # folder with the original images (prepare_eval.py)
    file_list: str | None = None  # names of the set's images, one a line (matched by file name anywhere under source)
    count: int | None = None  # take the first `count` images (of file_list, or of the sorted files under source)
    prepared_dir: str = "???"  # written by prepare_eval.py: gt/, gray/, files.txt, prepare.yaml
    protocol: Protocol = field(default_factory=Protocol)
    output_dir: str | None = None  # reproduce_tables.py (default outputs/eval/<name>): pred/, metrics.json, ...
    pred_dir: str | None = None  # colorized images (default output_dir/pred); runs of one model and settings may share
    model: str | None = None
    method: str = "ColorDiff (this implementation)"  # our row's label
    row: str | None = None  # the published row this run reproduces (ablations): ours is printed under it; None: last
    colorize_config: list[str] = field(default_factory=list)  # YAML files of ColorizeConfig for the colorize step
    colorize_overrides: list[str] = field(default_factory=list)  # key=value for ColorizeConfig
    evaluation: MetricSettings = field(default_factory=MetricSettings)
    published: list[str] = field(default_factory=list)  # configs/eval/published/*.yaml to print beside ours
    grid_samples: list[str] = field(default_factory=list)  # names (without extension) for the grid; [] = first ones
    grid_count: int = 6
    overwrite: bool = False


def repo_path(path: str | os.PathLike) -> Path:
    """A path as given when it exists, else relative to the repository (so configs work from any folder)."""
    path = Path(path)
    if path.exists() or path.is_absolute() or not (REPO / path).exists():
        return path
    return REPO / path


def read_file_list(path: str | os.PathLike) -> list[str]:
    path = repo_path(path)
    if not path.is_file():
        raise UsageError(f"{path}: file list not found")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")]


def _source_entries(config: EvalSetConfig) -> tuple[list[str], dict[str, Path], list[str]]:
    """(entries, {entry: source file}, errors) for the set's images under config.source."""
    source = Path(config.source or "")
    if not config.source or not source.is_dir():
        raise UsageError(f"{config.source}: source folder not found (set source=FOLDER with the original images)")
    files = [f for f in sorted(source.rglob("*")) if f.is_file() and is_image_path(f)
             and not any(p.startswith(".") for p in f.relative_to(source).parts)]
    if config.file_list is None:  # names not known in advance: the sorted files, recorded in files.txt
        entries = [f.relative_to(source).as_posix() for f in files][: config.count]
        return entries, {e: source / e for e in entries}, []
    entries = read_file_list(config.file_list)[: config.count]
    by_name: dict[str, list[Path]] = {}
    for f in files:  # ImageNet val may be flat or sorted into class folders: match by file name
        by_name.setdefault(f.name, []).append(f)
    found, errors = {}, []
    for entry in entries:
        matches = by_name.get(Path(entry).name, [])
        if len(matches) == 1:
            found[entry] = matches[0]
        elif not matches:
            errors.append(f"{entry}: not found under {source}")
        else:
            errors.append(f"{entry}: ambiguous, several files under {source} have this name "
                          f"({examples([str(m) for m in matches])})")
    return entries, found, errors


def prepare_eval_set(config: EvalSetConfig) -> int:
    """Write gt/<name>.png (protocol-cropped originals) and gray/<name>.png (their Lab-L gray, the model's input)."""
    from colordiff.color import rgb_to_gray
    from colordiff.config import to_yaml

    check_protocol(config.protocol)
    entries, found, errors = _source_entries(config)
    out = Path(config.prepared_dir)
    for message in errors:
        _report(message)

    def prepare(entry: str) -> str | None:
        stem = Path(entry).with_suffix("").as_posix()
        gt_path, gray_path = out / "gt" / f"{stem}.png", out / "gray" / f"{stem}.png"
        if not config.overwrite and gt_path.is_file() and gray_path.is_file():
            return "skipped"
        try:
            rgb = apply_protocol(read_uint8(found[entry]), config.protocol)  # (S, S, 3) uint8
        except ImageReadError as err:
            _report(str(err))
            return None
        gray = rgb_to_gray(torch.tensor(rgb).permute(2, 0, 1).double() / 255)  # (3, S, S), Lab L kept
        write_image(gt_path, rgb)
        write_image(gray_path, gray.permute(1, 2, 0).numpy())
        return "done"

    todo = [e for e in entries if e in found]
    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = list(tqdm(pool.map(prepare, todo), total=len(todo), unit="img", disable=None, desc="prepare"))
    write_text(out / "files.txt", "".join(f"{e}\n" for e in entries))
    write_text(out / "prepare.yaml", to_yaml(config))
    failed = len(errors) + outcomes.count(None)
    print(f"colordiff: prepared {outcomes.count('done')}, {outcomes.count('skipped')} skipped (already done), "
          f"{failed} failed -> {out}", file=sys.stderr)
    return EXIT_FAILURES if failed else EXIT_OK


# -----------------------------------------------------------------------------
# tables and the comparison grid

TABLE_COLUMNS = {"fid": "FID↓", "colorfulness": "CF↑", "delta_cf": "ΔCF↓", "psnr": "PSNR↑"}


def load_published(name: str) -> dict:
    """A published table (configs/eval/published/<name>.yaml): title, source, columns, sets: {set: rows}."""
    path = repo_path(name if name.endswith(".yaml") else f"configs/eval/published/{name}.yaml")
    if not path.is_file():
        raise UsageError(f"{path}: published table not found")
    table = OmegaConf.to_container(OmegaConf.load(path))
    unknown = [c for c in table["columns"] if c not in TABLE_COLUMNS]
    if unknown:
        raise UsageError(f"{path}: unknown columns {unknown}")
    return table


@dataclass
class OurRow:
    """One of our evaluated runs as a table row: the published row it reproduces (None: a new method), its label
    and its results (metrics.json)."""

    row: str | None
    method: str
    results: dict


def check_row(table: dict, set_name: str, row: str | None) -> None:
    """A run's `row` must name one of the published rows of its set (before hours of colorizing)."""
    labels = [r[0] for r in table["sets"][set_name]["rows"]]
    if row is not None and row not in labels:
        raise UsageError(f"row {row!r} is not a row of {table['title']} ({set_name}); rows: "
                         + "; ".join(labels))


def table_rows(table: dict, set_name: str, ours: list[OurRow]) -> list[tuple[list[str], bool]]:
    """[(cells, is ours)]: the published rows of set_name as printed, each followed by our runs that reproduce it,
    then our runs of new methods (row None); our cells at full precision."""
    def our_cells(run: OurRow) -> list[str]:
        values = [run.results.get(c) for c in table["columns"]]
        return [run.method] + ["-" if v is None or not math.isfinite(v) else repr(float(v)) for v in values]

    rows = []
    for printed in table["sets"][set_name]["rows"]:
        rows.append(([str(v) if v is not None else "-" for v in printed], False))
        rows += [(our_cells(run), True) for run in ours if run.row == printed[0]]
    return rows + [(our_cells(run), True) for run in ours if run.row is None]


def render_markdown(table: dict, set_name: str, rows: list[tuple[list[str], bool]], note: str) -> str:
    headers = ["Method"] + [TABLE_COLUMNS[c] for c in table["columns"]]
    lines = [f"### {table['title']} — {table['sets'][set_name]['label']}", "",
             "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for cells, ours in rows:
        values = [f"{float(v):.2f}" if ours and v != "-" else v for v in cells[1:]]  # ours at the papers' precision
        lines.append("| " + " | ".join([f"**{cells[0]}**" if ours else cells[0]] + values) + " |")
    return "\n".join(lines + ["", f"Published rows: {table['source']}; ours in bold. {note}", ""])


def render_csv(table: dict, rows: list[tuple[list[str], bool]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["method"] + list(table["columns"]) + ["source"])
    writer.writerows(cells + ["ours" if ours else "published"] for cells, ours in rows)
    return buffer.getvalue()


def sibling_runs(folder: Path, table_name: str, set_name: str) -> list[OurRow]:
    """Our evaluated runs in folder/*/ (metrics.json + config.yaml) that belong to the table and set: an ablation
    table collects its rows from the runs of its row configs, which write to sibling folders."""
    runs = []
    for run_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        if not (run_dir / "metrics.json").is_file() or not (run_dir / "config.yaml").is_file():
            continue
        try:
            config = load_config(EvalSetConfig, [run_dir / "config.yaml"])
            results = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
        except (ConfigError, json.JSONDecodeError) as err:
            _report(f"{run_dir}: left out of the collected table ({err})")
            continue
        if config.name == set_name and table_name in config.published:
            runs.append(OurRow(config.row, config.method, results))
    return runs


def comparison_grid(keys: list[str], gray_dir: Path, pred_dir: Path, gt_dir: Path, gutter: int = 4) -> np.ndarray:
    """Rows of gray | ours | GT tiles (uint8 (rows*(S+g)-g, 3*(S+g)-g, 3), white gutters), tiles at the GT's size."""
    gray_index, pred_index, gt_index = image_index(gray_dir), image_index(pred_dir), image_index(gt_dir)
    tiles = []
    for key in keys:
        if key not in gt_index or key not in pred_index or key not in gray_index:
            raise UsageError(f"grid sample {key!r} is missing from {gray_dir}, {pred_dir} or {gt_dir}")
        gt = read_uint8(gt_index[key])
        row = []
        for path in (gray_index[key], pred_index[key]):
            image = read_uint8(path)
            if image.shape != gt.shape:
                image = np.asarray(Image.fromarray(image).resize((gt.shape[1], gt.shape[0]), Image.Resampling.BICUBIC))
            row.append(image)
        tiles.append(row + [gt])
    width = max(t[0].shape[1] for t in tiles)
    grid_rows = []
    for row in tiles:
        h = row[0].shape[0]
        strip = np.full((h, 3 * width + 2 * gutter, 3), 255, np.uint8)
        for j, tile in enumerate(row):
            strip[:, j * (width + gutter) : j * (width + gutter) + tile.shape[1]] = tile
        grid_rows.append(strip)
    sep = np.full((gutter, 3 * width + 2 * gutter, 3), 255, np.uint8)
    return np.concatenate([x for r in grid_rows for x in (r, sep)][:-1])


def eval_config_for_set(config: EvalSetConfig, pred: Path, gt: Path) -> EvalConfig:
    return EvalConfig(**asdict(config.evaluation), pred=str(pred), gt=str(gt), protocol=config.protocol)


def reproduce_tables(config: EvalSetConfig) -> int:
    """colorize prepared_dir/gray -> evaluate against prepared_dir/gt -> tables and grid in output_dir; exit status.

    Colorizing and evaluating are split across `accelerate launch` processes; colorizing resumes (finished outputs
    are skipped). The main process writes the results. A run that reproduces a published row (`row`, the ablation
    configs) also refreshes the whole table in output_dir's parent from every sibling run of that table.
    """
    from accelerate import PartialState

    from colordiff.colorize import ColorizeConfig, run_colorize

    prepared = Path(config.prepared_dir)
    gray_dir, gt_dir = prepared / "gray", prepared / "gt"
    if not gray_dir.is_dir() or not gt_dir.is_dir():
        raise UsageError(f"{prepared}: no prepared set (gray/, gt/); run scripts/prepare_eval.py first")
    if not config.model:
        raise UsageError("no model given (--model DIR or model=...)")
    published = [load_published(name) for name in config.published]  # fail before hours of colorizing
    for name, table in zip(config.published, published, strict=True):
        if config.name not in table["sets"]:
            raise UsageError(f"published table {name} has no rows for set {config.name!r}")
        check_row(table, config.name, config.row)
    out = Path(config.output_dir or f"outputs/eval/{config.name}")
    pred_dir = Path(config.pred_dir) if config.pred_dir else out / "pred"

    colorize = load_config(ColorizeConfig, [repo_path(c) for c in config.colorize_config],
                           [f"model={dotlist_value(config.model)}", f"output_dir={dotlist_value(str(pred_dir))}"]
                           + list(config.colorize_overrides))
    colorize.inputs, colorize.overwrite = [str(gray_dir)], config.overwrite
    for key in ("priors_config", "captions"):  # files named by the configs, relative to the repository
        if getattr(colorize, key):
            setattr(colorize, key, str(repo_path(getattr(colorize, key))))
    status = run_colorize(colorize)
    state = PartialState()
    state.wait_for_everyone()

    evaluation = eval_config_for_set(config, pred_dir, gt_dir)
    with torch.inference_mode():
        results, rows = run_evaluation(evaluation)  # every process scores its share, all get the results
    if state.num_processes > 1:  # one exit status everywhere: each process colorized its own share
        from accelerate.utils import gather_object

        status = max(gather_object([status]))
    if state.is_main_process:
        write_results(config, out, pred_dir, results, rows, published)
    # nobody exits before the main process has written: torchrun stops every process when one exits non-zero
    state.wait_for_everyone()
    return EXIT_FAILURES if status or results["n_failed"] else EXIT_OK


def write_results(config: EvalSetConfig, out: Path, pred_dir: Path, results: dict, rows: list[dict],
                  published: list[dict]) -> None:
    """metrics.json, per_image.csv, config.yaml, the tables (this run's, and for an ablation row the whole table from
    its sibling runs) and the comparison grid."""
    from colordiff.config import to_yaml

    prepared = Path(config.prepared_dir)
    gray_dir, gt_dir = prepared / "gray", prepared / "gt"
    write_text(out / "metrics.json", to_json(results))
    write_csv(out / "per_image.csv", rows)
    write_text(out / "config.yaml", to_yaml(config))
    protocol = (f"protocol {config.protocol.size} px / {config.protocol.crop}, CF = `abs` colorfulness, "
                f"FID = {config.evaluation.fid_variant} Inception")
    note = (f"Ours: {results['n_images']} images, {protocol}"
            + ("" if "fid" in results else " (not computed: no fid_weights)") + ".")
    markdown = []
    for name, table in zip(config.published, published, strict=True):
        rows_ = table_rows(table, config.name, [OurRow(config.row, config.method, results)])
        markdown.append(render_markdown(table, config.name, rows_, note))
        write_text(out / f"table_{name}.md", markdown[-1])
        write_text(out / f"table_{name}.csv", render_csv(table, rows_))
        if config.row is not None:  # the whole ablation table, from this run and its siblings
            collected = table_rows(table, config.name, sibling_runs(out.resolve().parent, name, config.name))
            whole = render_markdown(table, config.name, collected, f"Ours: {protocol}.")
            write_text(out.parent / f"table_{name}.md", whole)
            write_text(out.parent / f"table_{name}.csv", render_csv(table, collected))

    _add_to_model_card(config, markdown)
    keys = config.grid_samples or [Path(e).with_suffix("").as_posix() for e in
                                   read_file_list(prepared / "files.txt")][: config.grid_count]
    grid = comparison_grid(keys, gray_dir, pred_dir, gt_dir)
    write_image(out / "grid.png", grid)
    print("\n".join(markdown) or to_json(results))
    print(f"colordiff: results in {out} (metrics.json, per_image.csv, table_*.md|csv, grid.png)"
          + (f"; whole tables in {out.parent}" if config.row is not None else ""), file=sys.stderr)


def _add_to_model_card(config: EvalSetConfig, markdown: list[str]) -> None:
    """The tables into the evaluated model folder's card (its section for this set and row, replaced on a re-run);
    a hub id or a folder that cannot be written is left as it is, with a warning."""
    from colordiff.model_card import add_evaluation

    folder = Path(config.model)
    if not markdown or not (folder / "model_index.json").is_file():
        return
    name = config.name + (f", row {config.row}" if config.row is not None else "")
    try:
        add_evaluation(folder, "\n\n".join(markdown), name=name)
    except (OSError, ValueError) as err:
        print(f"colordiff: warning: {folder}: model card not updated ({err})", file=sys.stderr)


# -----------------------------------------------------------------------------
# scripts/prepare_eval.py and scripts/reproduce_tables.py


def eval_set_parser(doc: str) -> argparse.ArgumentParser:
    """The scripts' common arguments: --config files and positional key=value overrides of EvalSetConfig."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    parser.add_argument("--config", action="append", default=[], help="configs/eval/<set>.yaml (repeatable)")
    return parser


def eval_set_main(prog: str, parser: argparse.ArgumentParser, flags: dict[str, str], job, argv=None) -> int:
    """--config files <- flags (argparse dest -> config key) <- key=value overrides, then job(config): its exit
    status, or 2 with one line naming `prog` for a bad config or usage."""
    args = parser.parse_intermixed_args(argv)  # key=value overrides may come after flags
    given = [f"{key}={dotlist_value(getattr(args, name))}" for name, key in flags.items()
             if getattr(args, name) is not None]
    try:
        config = load_config(EvalSetConfig, [repo_path(c) for c in args.config], given + args.overrides)
        return job(config)
    except (ConfigError, UsageError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
