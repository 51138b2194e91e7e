"""Subclassing diffusers models that add config keys of their own."""

from __future__ import annotations

import inspect


def extend_init_signature(cls: type, base: type, **extra_defaults) -> None:
    """Expose `base.__init__`'s arguments plus `extra_defaults` as `cls.__init__`'s signature.

    diffusers' ConfigMixin reads the expected config keys from `inspect.signature(cls.__init__)`. A subclass whose
    `__init__(self, extra=..., **base_kwargs)` forwards everything else to the base would otherwise lose every base
    key on `from_pretrained` / `from_config`. Giving it the full signature keeps both saving and loading exact.
    """
    base_sig = inspect.signature(base.__init__)
    params = list(base_sig.parameters.values())
    taken = {p.name for p in params}
    for name, default in extra_defaults.items():
        if name in taken:
            raise ValueError(f"{cls.__name__}: config key {name!r} already exists in {base.__name__}")
        params.append(inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default))
    cls.__init__.__signature__ = base_sig.replace(parameters=params)
