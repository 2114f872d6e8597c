"""Node parameters described as data: one `ParamSpec` table per node, ROS-free.

Every node declares its table in `__init__` (rmseg_ros.nodes.common.declare_parameters), so
`ros2 param list/describe` shows all of them before any lifecycle transition, and reads it back
through `read_parameters`, which applies the same checks everywhere: a value is converted to its
default's type (a double given as `x:=1` arrives as an integer), and a parameter with `choices`
refuses anything else with a message that names it. The launch file and the tests use the same
tables without rclpy.

Conventions of `default`: bool, int, float, str, a non-empty list of float, or an empty list for
an optional string array (declared typed and unset: ROS 2 cannot infer a type from `[]`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# the QoS vocabulary of every node's data topics (subscriptions and publishers alike)
QOS_RELIABILITIES = ('best_effort', 'reliable')


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: Any
    description: str
    choices: tuple[Any, ...] = ()  # allowed values; () = any value of the default's type
    read_only: bool = False  # read once when the node starts; changing it later does nothing

    def describe(self) -> str:
        """The description as `ros2 param describe` shows it, with the allowed values."""
        if not self.choices:
            return self.description
        return f"{self.description} One of: {', '.join(map(str, self.choices))}."


def qos_parameters(what: str, reliability: str, depth: int, *, read_only: bool = False
                   ) -> tuple[ParamSpec, ParamSpec]:
    """`qos_reliability` and `qos_depth` of a node's data topics (`what` names them), with the
    node's defaults: one vocabulary for every node (a documented override is
    `-p qos_reliability:=reliable`); `read_only` where the node reads them only at start."""
    if reliability not in QOS_RELIABILITIES:
        raise ValueError(f'qos_reliability default must be one of {QOS_RELIABILITIES}')
    return (
        ParamSpec('qos_reliability', reliability, f"Reliability of {what}: 'best_effort' "
                  "(sensor data; a best-effort subscription accepts any publisher) or "
                  "'reliable'.", choices=QOS_RELIABILITIES, read_only=read_only),
        ParamSpec('qos_depth', depth, f'History depth of {what} (keep last; >= 1).',
                  read_only=read_only),
    )


def coerce(spec: ParamSpec, value: Any) -> Any:
    """`value` as the type of `spec.default`, checked against `spec.choices`; ValueError names
    the parameter. None (an unset optional array) stays None."""
    if value is None:
        return None
    default = spec.default
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f'parameter {spec.name!r} must be true or false, got {value!r}')
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f'parameter {spec.name!r} must be a number, got {value!r}')
        value = float(value)
    elif isinstance(default, list) and default and isinstance(default[0], float):
        try:
            value = [float(v) for v in value]
        except (TypeError, ValueError):
            raise ValueError(f'parameter {spec.name!r} must be a list of numbers, got '
                             f'{value!r}') from None
    if spec.choices and value not in spec.choices:
        raise ValueError(f'parameter {spec.name!r} must be one of '
                         f'{", ".join(map(repr, spec.choices))}, got {value!r}')
    return value


def read_parameters(specs: Iterable[ParamSpec], get: Any) -> dict[str, Any]:
    """name -> checked value for every spec, `get(name)` giving the raw value."""
    return {spec.name: coerce(spec, get(spec.name)) for spec in specs}


def defaults(specs: Iterable[ParamSpec]) -> dict[str, Any]:
    return {spec.name: spec.default for spec in specs}


def spec_table(specs: Iterable[ParamSpec]) -> Mapping[str, ParamSpec]:
    table = {}
    for spec in specs:
        if spec.name in table:
            raise ValueError(f'parameter {spec.name!r} is declared twice')
        table[spec.name] = spec
    return table
