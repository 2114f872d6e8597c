"""Typed configuration: YAML files -> dataclasses, strict about unknown keys.

A misspelt key in a YAML file is an error, not a silently ignored setting.

Overrides (a variant file over its defaults, a stage's or the smoke section, `--set`) are applied
with `merge_config`, which knows the dataclass the result is loaded into: a key whose field is a
*section* (a dataclass, or a dict field whose metadata is `section(...)`, such as a model config
built later) merges key by key; any other value replaces the default whole, mappings included.
So `scene: {robots: {xarm6: 1.0}}` over the simulator's defaults means "only xarm6", not
"xarm6 added to the default arms", and a weight table is never a mix of two files.
"""

from __future__ import annotations

import copy
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


SECTION = 'rmseg_section'  # dataclasses.field metadata key: the schema of a dict-typed section


def section(schema: type) -> dict[str, type]:
    """Field metadata of a dict field that holds a partial `schema` (e.g. a model config whose
    required fields are derived later), so overrides merge into it key by key as into a
    dataclass section: `field(default_factory=dict, metadata=section(FusionConfig))`."""
    return {SECTION: schema}


def section_schema(schema: type, key: str) -> type | None:
    """The dataclass that field `key` of `schema` holds when it is a section, else None."""
    if not dataclasses.is_dataclass(schema):
        return None
    found = {f.name: f for f in dataclasses.fields(schema)}.get(key)
    if found is None:
        return None
    if SECTION in found.metadata:
        return found.metadata[SECTION]
    hint = typing.get_type_hints(schema)[key]
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint)
                 if isinstance(a, type) and dataclasses.is_dataclass(a)]
        if len(inner) == 1:
            return inner[0]
    return None


def merge_config(base: dict[str, Any], override: dict[str, Any] | None,
                 schema: type) -> dict[str, Any]:
    """`base` with `override` applied, for a config loaded into dataclass `schema` (new dict).

    Sections (see `section_schema`) merge recursively; every other value replaces, including
    a mapping such as `robots` or `timeouts` (the override says the whole table) and a key the
    schema does not know (from_dict reports it).
    """
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        sub = section_schema(schema, key)
        if sub is not None and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_config(out[key], value, sub)
        else:
            out[key] = copy.deepcopy(value)
    return out


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = '') -> T:
    """Build dataclass `cls` from a mapping, recursing into nested dataclass fields."""
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]  # T: a dataclass
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
    if isinstance(hint, type) and dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return from_dict(hint, value, where)
    origin = typing.get_origin(hint)
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            if isinstance(arg, type) and dataclasses.is_dataclass(arg) \
                    and isinstance(value, dict):
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
