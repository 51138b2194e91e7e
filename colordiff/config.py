"""Settings: YAML files and `key=value` overrides merged by omegaconf onto a typed dataclass schema."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from omegaconf import OmegaConf
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

    Unknown keys and wrong types fail loudly with the file or override that caused them.
    """
    merged = OmegaConf.structured(schema)
    for file in files:
        path = Path(file)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            merged = OmegaConf.merge(merged, OmegaConf.load(path))
        except OmegaConfBaseException as err:
            raise ConfigError(f"{path}: {_one_line(err)}") from None
    try:
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
        return OmegaConf.to_object(merged)
    except MissingMandatoryValue as err:
        raise ConfigError(f"{err.full_key} is required (set it in a config file or as {err.full_key}=...)") from None
    except OmegaConfBaseException as err:
        raise ConfigError(f"overrides {' '.join(overrides) or '(none)'}: {_one_line(err)}") from None


def to_yaml(config) -> str:
    """The resolved config as YAML (saved beside every checkpoint, model and evaluation result)."""
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def _one_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0]
