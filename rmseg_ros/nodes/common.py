"""What every node of the package does the same way: parameters from a ParamSpec table, QoS from
one vocabulary, stop signals, and the start-spin-stop of a process.

SIGTERM (how launchers, bringup and test fixtures stop children) is turned into the same clean
shutdown as Ctrl-C, so files are closed, workers joined and the DDS participant leaves the graph.
rclpy's own handlers did not end spin() on a context of our own, so a stop request went unseen
until the launcher killed the process; Python's handlers run between the bounded waits of `spin`.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.exceptions import ParameterUninitializedException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.logging import get_logger
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from rmseg_ros.params import QOS_RELIABILITIES, ParamSpec, read_parameters
from rmseg_ros.runtime import tune_malloc

SPIN_PERIOD_S = 0.2  # longest wait before a stop request or a finished worker is seen


def make_qos(reliability: str, depth: int) -> QoSProfile:
    """Keep-last, volatile QoS of a data topic (`qos_reliability`, `qos_depth` of any node)."""
    if reliability not in QOS_RELIABILITIES:
        raise ValueError(f'qos_reliability must be one of {QOS_RELIABILITIES}, got '
                         f'{reliability!r}')
    if int(depth) < 1:
        raise ValueError(f'qos_depth must be >= 1, got {depth}')
    return QoSProfile(depth=int(depth), history=HistoryPolicy.KEEP_LAST,
                      reliability=ReliabilityPolicy.RELIABLE if reliability == 'reliable'
                      else ReliabilityPolicy.BEST_EFFORT,
                      durability=DurabilityPolicy.VOLATILE)


def _is_double(default: Any) -> bool:
    """A double or a double array: integers given for it are accepted and converted."""
    return isinstance(default, float) or (
        isinstance(default, list) and bool(default) and isinstance(default[0], float))


def declare_parameters(node: Any, specs: Iterable[ParamSpec]) -> None:
    """Declare a ParamSpec table on `node` (overrides given at construction apply). Doubles and
    double arrays are dynamically typed so `x:=1` and `c:=[255, 0, 0]` are accepted
    (parameter_values converts them); an empty-list default is an optional string array,
    declared typed and unset."""
    for spec in specs:
        descriptor = ParameterDescriptor(
            description=spec.describe(), read_only=spec.read_only,
            dynamic_typing=_is_double(spec.default),
            additional_constraints=f"one of {', '.join(map(str, spec.choices))}"
            if spec.choices else '')
        default = Parameter.Type.STRING_ARRAY if spec.default == [] else spec.default
        node.declare_parameter(spec.name, default, descriptor)


def parameter_values(node: Any, specs: Iterable[ParamSpec]) -> dict[str, Any]:
    """The node's current values of a table, converted and checked (rmseg_ros.params)."""
    def get(name: str) -> Any:
        try:
            return node.get_parameter(name).value
        except ParameterUninitializedException:
            return None
    return read_parameters(specs, get)


def raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def install_stop_handlers() -> None:
    """SIGINT and SIGTERM end the spin loop as KeyboardInterrupt (call after rclpy.init, which
    installs handlers of its own)."""
    signal.signal(signal.SIGINT, raise_keyboard_interrupt)
    signal.signal(signal.SIGTERM, raise_keyboard_interrupt)


def split_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(our options, everything from --ros-args on), argv[0] excluded."""
    argv = list(argv)
    start = argv.index('--ros-args') if '--ros-args' in argv else len(argv)
    return argv[1:start], argv[start:]


Spin = Callable[..., None]


def run_node(make: Callable[[Any], Any], argv: Sequence[str], *, name: str,
             body: Callable[[Any, Spin], int] | None = None,
             on_exit: Callable[[Any], None] | None = None,
             start_failure: Callable[[BaseException], int] = lambda exc: 2) -> int:
    """The process of one node: rclpy.init on a fresh context, `node = make(context)`, then
    `body(node, spin)` (default: spin until shutdown; 0), `on_exit(node)`, clean up.

    `spin(until=None)` runs the executor in bounded waits while the context is up and `until()`
    is false. A node that cannot be built is logged as 'cannot start: ...' and the process exits
    with `start_failure(exc)`; a stop request (SIGINT, SIGTERM, shutdown) exits 0."""
    tune_malloc()
    context = rclpy.Context()
    rclpy.init(args=list(argv), context=context)
    install_stop_handlers()
    logger = get_logger(name)
    node = None
    status = 0
    try:
        try:
            node = make(context)
        except Exception as exc:
            logger.error(f'cannot start: {type(exc).__name__}: {exc}')
            return start_failure(exc)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)

        def spin(until: Callable[[], bool] | None = None) -> None:
            while context.ok() and not (until is not None and until()):
                executor.spin_once(timeout_sec=SPIN_PERIOD_S)

        def spin_only(node: Any, spin: Spin) -> int:
            spin()
            return 0

        try:
            status = (body or spin_only)(node, spin)
        except (KeyboardInterrupt, ExternalShutdownException):
            status = 0
        except SystemExit as exc:  # a node that ends itself (e.g. after --duration)
            status = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        finally:
            if on_exit is not None:
                on_exit(node)
            executor.shutdown(timeout_sec=1.0)
    finally:
        if node is not None:
            node.destroy_node()
        context.try_shutdown()
    return status
