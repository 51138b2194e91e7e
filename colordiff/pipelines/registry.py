"""Which pipeline class a model folder holds, by the `_class_name` in its model_index.json, and loading one.

Every failure to load a model folder or hub id is a ModelLoadError (a UsageError: exit status 2) of one line that
names the file at fault: `cannot load model M: text_encoder/model.safetensors: truncated or corrupt safetensors file
(...)`. diffusers', transformers' and huggingface_hub's log output is held back while loading; what it reports that
makes the model unusable (weights left randomly initialized, shapes that do not fit the config) becomes that error.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from diffusers import DiffusionPipeline
from safetensors import SafetensorError, safe_open

from colordiff.config import error_line
from colordiff.errors import UsageError
from colordiff.pipelines.colordiff_pipeline import ColorDiffPipeline
from colordiff.pipelines.seada_pipeline import SeAdaPipeline

PIPELINES: dict[str, type[DiffusionPipeline]] = {"ColorDiffPipeline": ColorDiffPipeline, "SeAdaPipeline": SeAdaPipeline}
SD_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")  # what from_stable_diffusion reads
LIBRARY_LOGGERS = ("diffusers", "transformers", "huggingface_hub")
# what loading raises for unreadable, truncated or mismatched files (json.JSONDecodeError is a ValueError)
LOAD_ERRORS = (OSError, ValueError, TypeError, KeyError, RuntimeError, SafetensorError)
T = TypeVar("T")


class UnknownPipelineError(ValueError):
    """A model folder whose model_index.json names a pipeline class that is not one of PIPELINES (a Stable
    Diffusion folder, say)."""

    def __init__(self, model: str | Path, name: str | None):
        self.model, self.name = str(model), name
        super().__init__(f"{model}: model_index.json names pipeline {name!r}; known: {', '.join(sorted(PIPELINES))}")


class ModelLoadError(UsageError):
    """A model folder or hub id that cannot be loaded; `detail` names the file at fault (relative to the model)."""

    def __init__(self, model: str | Path, detail: str):
        self.model, self.detail = str(model), detail
        super().__init__(f"cannot load model {model}: {detail}")


def pipeline_class_for(model: str | Path, **hub_kwargs) -> type[DiffusionPipeline]:
    """The registered pipeline class of a model folder or hub id (read from its model_index.json)."""
    index = DiffusionPipeline.load_config(str(model), **hub_kwargs)
    name = index.get("_class_name")
    if name not in PIPELINES:
        raise UnknownPipelineError(model, name)
    return PIPELINES[name]


def load_pipeline(model: str | Path, dtype=None, **hub_kwargs) -> DiffusionPipeline:
    """Load a ColorDiff (or other registered) model folder / hub id with safetensors weights only.

    A folder of an unregistered pipeline is an UnknownPipelineError (a ValueError); any other failure a
    ModelLoadError naming the file at fault."""
    with quiet_loading():
        try:
            cls = pipeline_class_for(model, **hub_kwargs)
        except OSError as err:  # no such folder or hub id, an unreadable model_index.json
            raise ModelLoadError(model, error_line(err)) from None
    kwargs = {"use_safetensors": True, **hub_kwargs}
    if dtype is not None:
        kwargs["dtype"] = dtype
    return guarded_load(model, lambda: cls.from_pretrained(str(model), **kwargs), **hub_kwargs)


def guarded_load(model: str | Path, load: Callable[[], T], components: Sequence[str] | None = None,
                 **hub_kwargs) -> T:
    """`load()`, which reads the model folder or hub id `model`, with the libraries' log output held back. A failure,
    or weights it left randomly initialized, is a ModelLoadError naming the file at fault among `components` (the
    subfolders load reads; default: those model_index.json lists)."""
    with quiet_loading() as records:
        try:
            loaded = load()
        except LOAD_ERRORS as err:
            raise ModelLoadError(model, diagnose(model, err, records, components, **hub_kwargs)) from None
    missing = _missing_weights(records)
    if missing is not None:
        raise ModelLoadError(model, diagnose(model, None, records, components, **hub_kwargs))
    return loaded


# -- quiet loading ------------------------------------------------------------------------------------------------
class _Collect(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]):
        super().__init__(logging.WARNING)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def quiet_loading() -> Iterator[list[logging.LogRecord]]:
    """Within: the libraries' warnings and errors are collected (yielded), not printed; Python warnings are
    ignored; diffusers' and transformers' loading progress bars are off. All is restored afterwards."""
    import diffusers
    import transformers

    diffusers.utils.logging.get_logger("diffusers")  # the libraries' own handlers are set up now, not inside
    transformers.utils.logging.get_logger("transformers")
    records: list[logging.LogRecord] = []
    handler, saved = _Collect(records), []
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.handlers[:], logger.propagate, logger.level))
        logger.handlers, logger.propagate = [handler], False
        if logger.getEffectiveLevel() > logging.WARNING:  # what makes a model unusable is logged as a warning
            logger.setLevel(logging.WARNING)
    bars = [(lib, lib.is_progress_bar_enabled()) for lib in (diffusers.utils.logging, transformers.utils.logging)]
    for lib, _ in bars:
        lib.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield records
    finally:
        for logger, handlers, propagate, level in saved:
            logger.handlers, logger.propagate = handlers, propagate
            logger.setLevel(level)
        for lib, enabled in bars:
            if enabled:
                lib.enable_progress_bar()


# -- finding the file at fault ------------------------------------------------------------------------------------
def diagnose(model: str | Path, err: BaseException | None, records: list[logging.LogRecord],
             components: Sequence[str] | None = None, **hub_kwargs) -> str:
    """`<file relative to the model>: <what is wrong with it>` for a failed load (err) or one that left weights
    missing (err None); the error's own first line when no file can be blamed."""
    folder = local_folder(model, components, **hub_kwargs)
    names = list(components or (_index_components(folder) if folder else ()))
    if folder is not None:
        found = broken_file(folder, names) or _mismatch(folder, names, err, records)
        if found:
            return found
    missing = _missing_weights(records)
    if missing is not None:
        name, keys = missing
        more = f" and {len(keys) - 1} more" if len(keys) > 1 else ""
        file = _weights_name(folder, name) if folder else name
        return f"{file}: weights missing for {keys[0] if keys else 'some parameters'}{more} ({name}/config.json " \
               "asks for them)"
    text = error_line(err) if err is not None else "unknown error"
    return text.replace(f"{folder}/", "") if folder else text


def local_folder(model: str | Path, components: Sequence[str] | None = None, **hub_kwargs) -> Path | None:
    """The model's folder on this machine: the folder itself, or the hub cache's snapshot of a hub id (no
    download); None when it has neither."""
    if Path(model).is_dir():
        return Path(model)
    from huggingface_hub import try_to_load_from_cache

    for file in ("model_index.json", *(f"{c}/config.json" for c in components or SD_COMPONENTS)):
        try:
            cached = try_to_load_from_cache(str(model), file, cache_dir=hub_kwargs.get("cache_dir"),
                                            revision=hub_kwargs.get("revision"))
        except ValueError:  # not a valid hub id
            return None
        if isinstance(cached, str):
            return Path(cached).parents[file.count("/")]
    return None


def _index_components(folder: Path) -> list[str]:
    """The component subfolders model_index.json lists (all subfolders when it cannot be read)."""
    try:
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
        return [k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v and v[0]]
    except (OSError, ValueError, AttributeError):
        return sorted(p.name for p in folder.iterdir() if p.is_dir())


def broken_file(folder: Path, components: Sequence[str]) -> str | None:
    """The first unreadable file of the components: a JSON file that does not parse, a safetensors file that does not
    open (truncated, empty, not safetensors), a model (config.json) without safetensors weights."""
    for name in components:
        sub = folder / name
        if not sub.is_dir():
            return f"{name}/: missing (model_index.json lists it)" if (folder / "model_index.json").is_file() else None
        for file in sorted(sub.glob("*.json")):
            try:
                json.loads(file.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError) as err:
                return f"{name}/{file.name}: not valid JSON ({error_line(err)})"
        weights = sorted(sub.glob("*.safetensors"))
        for file in weights:
            try:
                with safe_open(str(file), framework="pt"):
                    pass
            except (SafetensorError, OSError) as err:
                return f"{name}/{file.name}: truncated or corrupt safetensors file ({error_line(err)})"
        if not weights and (sub / "config.json").is_file():
            others = sorted(p.name for p in sub.iterdir() if p.name != "config.json")
            return f"{name}: no safetensors weights ({', '.join(others) or 'config.json only'}; only safetensors " \
                   "files are read)"
    return None


_SHAPE = r"torch\.Size\((\[[^\]]*\])\)"


def _mismatch(folder: Path, components: Sequence[str], err: BaseException | None,
              records: list[logging.LogRecord]) -> str | None:
    """`<weights file> does not fit <component>/config.json (...)` when a weight's shape differs from the one the
    config builds: from diffusers' error (which names the tensor only) or transformers' load report."""
    text = str(err or "")
    for pattern, order in ((rf"because (\S+) expected shape {_SHAPE}, but got {_SHAPE}", (0, 2, 1)),
                           (rf"size mismatch for (\S+): copying a param with shape {_SHAPE} from checkpoint, the "
                            rf"shape in current model is {_SHAPE}", (0, 1, 2))):
        found = re.search(pattern, text)
        if found:
            key, in_file, in_config = (found.group(i + 1) for i in order)
            name = _component_with(folder, components, key, in_file)
            if name is not None:
                return f"{_weights_name(folder, name)} does not fit {name}/config.json ({key}: {in_file} in the " \
                       f"file, {in_config} from the config)"
    for name, rows in _report_rows(records, "MISMATCH"):
        key, detail = rows[0]
        shapes = re.search(rf"ckpt: {_SHAPE} vs model: ?{_SHAPE}", detail)
        what = f"{shapes.group(1)} in the file, {shapes.group(2)} from the config" if shapes else detail
        more = f"; {len(rows) - 1} more tensors" if len(rows) > 1 else ""
        return f"{_weights_name(folder, name)} does not fit {name}/config.json ({key}: {what}{more})"
    return None


def _component_with(folder: Path, components: Sequence[str], key: str, shape: str) -> str | None:
    """The component whose weights hold tensor `key` with `shape` ("[32, 48]"); the first holding `key` if none."""
    holding = []
    for name in components:
        for file in sorted((folder / name).glob("*.safetensors")):
            with safe_open(str(file), framework="pt") as weights:
                if key in weights.keys():
                    if str(list(weights.get_slice(key).get_shape())) == shape:
                        return name
                    holding.append(name)
    return holding[0] if holding else None


def _weights_name(folder: Path | None, name: str) -> str:
    """`<component>/<file>` of its one safetensors file, else `<component>/`."""
    files = sorted((folder / name).glob("*.safetensors")) if folder else []
    return f"{name}/{files[0].name}" if len(files) == 1 else f"{name}/"


def _message(record: logging.LogRecord) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", record.getMessage())  # without the terminal colors


def _report_rows(records: list[logging.LogRecord], status: str) -> Iterator[tuple[str, list[tuple[str, str]]]]:
    """(component, [(key, details)]) of the rows with `status` in each transformers LOAD REPORT collected."""
    for record in records:
        text = _message(record)
        source = re.search(r"LOAD REPORT\s+from: (\S+)", text)
        rows = re.findall(rf"^(\S.*?)\s*\|\s*{status}\s*\|(.*)$", text, flags=re.MULTILINE)
        if source and rows:
            yield Path(source.group(1)).name, [(key, detail.strip()) for key, detail in rows]


def _missing_weights(records: list[logging.LogRecord]) -> tuple[str, list[str]] | None:
    """(component, parameter names) of the first load that left parameters randomly initialized, or None."""
    for name, rows in _report_rows(records, "MISSING"):  # transformers
        return name, [key for key, _ in rows]
    for record in records:  # diffusers
        found = re.search(r"not initialized from the model checkpoint at (\S+) and are newly initialized: \[(.*?)\]",
                          _message(record), flags=re.DOTALL)
        if found:
            return Path(found.group(1)).name, re.findall(r"'([^']+)'", found.group(2))
    return None
