"""Settings: YAML files and `key=value` overrides merged by omegaconf onto a typed dataclass schema."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

T = TypeVar("T")

_OVERRIDE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*=")


class ConfigError(ValueError):
    """A config file or override that does not fit the schema (unknown key, wrong type, missing value)."""


def is_override(arg: str) -> bool:
    """`key=value` or `a.b=value`, as opposed to a path (a positional argument that exists on disk is a path)."""
    return bool(_OVERRIDE.match(arg)) and not Path(arg).exists()


def load_config(schema: type[T], files: Sequence[str | Path] = (), overrides: Sequence[str] = ()) -> T:
    """Schema defaults <- each YAML file in order <- `key=value` overrides; returns a schema instance.

    A file may build on others: `defaults: [base.yaml, ...]` (paths relative to the file) are merged first, in order,
    then the file's own keys on top. Unknown keys and wrong types fail loudly with the file or override that caused
    them.
    """
    merged = OmegaConf.structured(schema)
    for file in files:
        path = Path(file)
        try:
            merged = OmegaConf.merge(merged, read_yaml(path))
        except OmegaConfBaseException as err:
            raise ConfigError(f"{path}: {error_line(err)}") from None
    try:
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
        return OmegaConf.to_object(merged)
    except MissingMandatoryValue as err:
        raise ConfigError(f"{err.full_key} is required (set it in a config file or as {err.full_key}=...)") from None
    except OmegaConfBaseException as err:
        raise ConfigError(f"overrides {' '.join(overrides) or '(none)'}: {error_line(err)}") from None


def read_yaml(path: Path, _including: tuple[Path, ...] = ()) -> DictConfig:
    """One YAML file with its `defaults` (other files, relative to it, merged under it) resolved; no schema yet."""
    if not path.is_file():
        where = f" (in the defaults of {_including[-1]})" if _including else ""
        raise ConfigError(f"{path}: config file not found{where}")
    if path.resolve() in _including:
        raise ConfigError(f"{path}: includes itself through its defaults ({' -> '.join(map(str, _including))})")
    try:
        loaded = OmegaConf.load(path)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{path}: {error_line(err)}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{path}: expected a mapping of settings, got a {type(loaded).__name__}")
    bases = loaded.pop("defaults", None)
    if bases is None:
        return loaded
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, (ListConfig, list)) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: defaults must be a list of YAML file paths (relative to this file)")
    merged = OmegaConf.create()
    for base in bases:
        merged = OmegaConf.merge(merged, read_yaml(path.parent / base, (*_including, path.resolve())))
    return OmegaConf.merge(merged, loaded)


def to_yaml(config) -> str:
    """The resolved config as YAML (saved beside every checkpoint, model and evaluation result)."""
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def dotlist_value(value) -> str:
    """A value as the right-hand side of a `key=value` override, read back by omegaconf as the same value."""
    if isinstance(value, str):  # quoted, so that omegaconf keeps strings like "1e5" or "null" as written
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return str(value).lower() if isinstance(value, bool) else str(value)


def error_line(err: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none): errors are reported in one line."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
