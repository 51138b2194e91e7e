"""Settings: YAML files and `key=value` overrides merged by omegaconf onto a typed dataclass schema.

Values are checked when they are read, before any work starts: every float must be finite (nan and inf are refused
everywhere, inside lists and nested schemas too), and a field may declare its range in its dataclass metadata, read by
check_settings:

    steps: int = setting(50, min=1)                        # or field(default=50, metadata={"min": 1})
    seg_strength: float = setting(0.3, min=0, max=1)       # min / max inclusive, above / below exclusive
    resolution: int = setting(512, min=8, multiple_of=8)
    dtype: str = setting("auto", choices=("auto", "float32"))
    crop_border: int = setting(0, min=0, rule="must be 0 or more pixels")  # the message's own words

`None` passes (an optional value left unset). Checks between fields: a method `config_checks(self)` on the schema
yielding (field name, "the rest of the sentence") for each problem. Errors are ConfigErrors of one line that name the
dotted key (`protocol.size must be 0 (native) or a positive size, got -1`), and the file the value came from when no
override set it.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

T = TypeVar("T")

_OVERRIDE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*=")


class ConfigError(ValueError):
    """A config file or override that does not fit the schema (unknown key, wrong type, missing value, a value out
    of its range) or does not parse."""


def is_override(arg: str) -> bool:
    """`key=value` or `a.b=value`, as opposed to a path (a positional argument that exists on disk is a path)."""
    return bool(_OVERRIDE.match(arg)) and not Path(arg).exists()


def load_config(schema: type[T], files: Sequence[str | Path] = (), overrides: Sequence[str] = ()) -> T:
    """Schema defaults <- each YAML file in order <- `key=value` overrides; returns a schema instance.

    A file may build on others: `defaults: [base.yaml, ...]` (paths relative to the file) are merged first, in order,
    then the file's own keys on top. Unknown keys and wrong types fail loudly with the file or override that caused
    them, and so does a value that breaks its field's rules (setting_errors), before the caller does anything.
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
        config = OmegaConf.to_object(merged)
    except MissingMandatoryValue as err:
        raise ConfigError(f"{err.full_key} is required (set it in a config file or as {err.full_key}=...)") from None
    except OmegaConfBaseException as err:
        raise ConfigError(f"overrides {' '.join(overrides) or '(none)'}: {error_line(err)}") from None
    for key, message in setting_errors(config):
        raise ConfigError(_origin(key, [Path(f) for f in files], overrides) + message)
    return config


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
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: {yaml_error_line(err)}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
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


def yaml_error_line(err: yaml.YAMLError) -> str:
    """A YAML syntax error in one line, with the 1-based line and column where the parser stopped."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or error_line(err)
    if mark is None:
        return f"invalid YAML: {problem}"
    text = f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"
    context, start = getattr(err, "context", None), getattr(err, "context_mark", None)
    if context and start is not None and start is not mark:
        text += f" ({context} started at line {start.line + 1}, column {start.column + 1})"
    return text


# -- checks of the values -----------------------------------------------------------------------------------------
_RULES = ("min", "max", "above", "below", "multiple_of", "choices", "rule")


def setting(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, **rules) -> Any:
    """A dataclass field with its checks (see the module docstring): `setting(50, min=1)`."""
    unknown = set(rules) - set(_RULES)
    if unknown:
        raise TypeError(f"unknown setting rules {sorted(unknown)}; known: {', '.join(_RULES)}")
    return dataclasses.field(default=default, default_factory=factory, metadata=rules)


def describe_rules(rules: dict) -> str:
    """The rules of a field as the words of its error message: `must be in [0, 1]`."""
    if "rule" in rules:
        return rules["rule"]
    if "choices" in rules:
        return "must be one of " + ", ".join(str(c) for c in rules["choices"])
    if "multiple_of" in rules:
        step, low = rules["multiple_of"], rules.get("min", 0)
        if low > step:
            return f"must be a multiple of {step}, at least {low}"
        return f"must be a positive multiple of {step}"
    low, high = rules.get("min", rules.get("above")), rules.get("max", rules.get("below"))
    if low is not None and high is not None:
        return f"must be in {'[' if 'min' in rules else '('}{low}, {high}{']' if 'max' in rules else ')'}"
    if low is not None:
        return f"must be {'>=' if 'min' in rules else '>'} {low}"
    return f"must be {'<=' if 'max' in rules else '<'} {high}"


def follows_rules(value: Any, rules: dict) -> bool:
    if "choices" in rules and value not in rules["choices"]:
        return False
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return True  # a number rule on a non-number: the schema's types are omegaconf's to check
    return not (("min" in rules and value < rules["min"]) or ("max" in rules and value > rules["max"])
                or ("above" in rules and value <= rules["above"]) or ("below" in rules and value >= rules["below"])
                or ("multiple_of" in rules and (value <= 0 or value % rules["multiple_of"])))


def setting_errors(config: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    """(dotted key, one-line message) for every value of a schema instance that breaks its rules, nested schemas
    included; an empty iteration when all is well."""
    for spec in dataclasses.fields(config):
        key, value = prefix + spec.name, getattr(config, spec.name)
        if dataclasses.is_dataclass(value):
            yield from setting_errors(value, key + ".")
            continue
        bad = _non_finite(key, value)
        if bad is not None:
            yield bad[0], f"{bad[0]} must be a finite number, got {bad[1]}"
        elif value is not None and not follows_rules(value, spec.metadata):
            yield key, f"{key} {describe_rules(spec.metadata)}, got {value!r}"
    checks = getattr(config, "config_checks", None)
    for name, text in checks() if callable(checks) else ():
        yield prefix + name, f"{prefix}{name} {text}"


def check_settings(config: Any, prefix: str = "") -> None:
    """Raise a ConfigError for the first value of a schema instance that breaks its rules (setting_errors)."""
    for _, message in setting_errors(config, prefix):
        raise ConfigError(message)


def _non_finite(key: str, value: Any) -> tuple[str, float] | None:
    """(key, value) of the first nan or inf in a value (`name`, or `name[i]` inside lists and dicts), or None."""
    if isinstance(value, float):
        return None if math.isfinite(value) else (key, value)
    items = enumerate(value) if isinstance(value, (list, tuple)) else value.items() if isinstance(value, dict) else ()
    for index, item in items:
        found = _non_finite(f"{key}[{index}]", item)
        if found is not None:
            return found
    return None


def _origin(key: str, files: Sequence[Path], overrides: Sequence[str]) -> str:
    """`file: ` when the bad value of `key` came from a config file (the last that sets it, or the default of it
    that does), '' when an override (or nothing: the schema's default) set it."""
    path = re.sub(r"\[.*$", "", key)
    for override in overrides:
        given = override.split("=", 1)[0]
        if path == given or path.startswith(given + ".") or given.startswith(path + "."):
            return ""
    for file in reversed(files):
        found = _file_setting(Path(file), path)
        if found is not None:
            return f"{found}: "
    return ""


def _file_setting(path: Path, key: str) -> Path | None:
    """The file that gives `key` its value in `path` read with its defaults (itself or one of them; read_yaml has
    already refused circular defaults)."""
    loaded = OmegaConf.load(path)
    bases = loaded.pop("defaults", None) if isinstance(loaded, DictConfig) else None
    if OmegaConf.select(loaded, key, default=None) is not None:
        return path
    for base in reversed([bases] if isinstance(bases, str) else list(bases or [])):
        found = _file_setting(path.parent / base, key)
        if found is not None:
            return found
    return None
