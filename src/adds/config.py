"""Converting the typed config dataclasses to and from plain JSON-able dicts.

Each concern has its own frozen dataclass (``TowerConfig``, ``DecoderConfig``, ``PyramidConfig``, ...). Checkpoints
and run directories store them as JSON; :func:`config_from_dict` rebuilds them with the right nested types and
refuses unknown keys, naming them, instead of silently ignoring a typo.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

__all__ = ["config_to_dict", "config_from_dict"]

T = TypeVar("T")


def config_to_dict(config: Any) -> dict[str, Any]:
    """A dataclass (possibly nested) -> a dict of JSON types (tuples become lists)."""
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"expected a dataclass instance, got {type(config).__name__}")
    return _plain(dataclasses.asdict(config))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def config_from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Rebuild dataclass ``cls`` from ``data`` (as written by :func:`config_to_dict`); missing keys take defaults."""
    if not isinstance(data, dict):
        raise ValueError(f"config{where or ''} for {cls.__name__} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {field.name for field in dataclasses.fields(cls) if field.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"Unknown key(s) {unknown} in {cls.__name__} config{where}; known keys: {sorted(names)}")
    kwargs = {key: _coerce(hints[key], value, f"{where}.{key}") for key, value in data.items()}
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if value is None:
            return None
        for option in options:
            if dataclasses.is_dataclass(option) and isinstance(value, dict):
                return config_from_dict(option, value, where)
            if typing.get_origin(option) is tuple and isinstance(value, (list, tuple)):
                return tuple(value)
        return value
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return config_from_dict(hint, value, where)
    if origin is tuple and isinstance(value, (list, tuple)):
        return tuple(value)
    return value
