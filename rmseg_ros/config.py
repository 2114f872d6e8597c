"""Typed configuration: YAML files -> dataclasses, strict about unknown keys.

A misspelt key in a YAML file is an error, not a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar('T')

CONFIG_DIR = Path(__file__).resolve().parent.parent / 'config'


def share_path(relative: str) -> Path:
    """A package data file (config/..., weights/...): the source tree, else the ament share."""
    local = CONFIG_DIR.parent / relative
    if local.exists():
        return local
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory('rmseg_ros')) / relative
    except Exception:  # ament index absent or package not installed
        return local


def config_path(name: str) -> Path:
    """Path of a file in the package's config directory (source tree or ament share dir)."""
    return share_path(f'config/{name}')


def load_yaml(path: str | Path) -> dict[str, Any]:
    with open(path, encoding='utf-8') as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f'{path}: top level must be a mapping, got {type(data).__name__}')
    return data


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = '') -> T:
    """Build dataclass `cls` from a mapping, recursing into nested dataclass fields."""
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ValueError(f'{where or cls.__name__}: unknown keys {sorted(unknown)}; '
                         f'known: {sorted(fields)}')
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _convert(hints[name], value, f'{where or cls.__name__}.{name}')
    return cls(**kwargs)


def _convert(hint: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return from_dict(hint, value, where)
    origin = typing.get_origin(hint)
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            if dataclasses.is_dataclass(arg) and isinstance(value, dict):
                return from_dict(arg, value, where)
            if typing.get_origin(arg) is tuple and isinstance(value, list):
                return tuple(value)
    return value


def to_dict(obj: Any) -> dict[str, Any]:
    """Dataclass -> plain YAML/JSON-able dict (tuples become lists)."""
    def plain(v: Any) -> Any:
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(obj))
