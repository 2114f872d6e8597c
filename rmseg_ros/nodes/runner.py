"""Start-spin-stop of a plain rclpy node in its own context, shared by the small tool nodes.

SIGTERM (how launchers, bringup and test fixtures stop children) is turned into the same clean
shutdown as Ctrl-C, so files are closed and the DDS participant leaves the graph.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Sequence
from typing import Any

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

from rmseg_ros.runtime import tune_malloc


def raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def split_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(our options, everything from --ros-args on), argv[0] excluded."""
    argv = list(argv)
    start = argv.index('--ros-args') if '--ros-args' in argv else len(argv)
    return argv[1:start], argv[start:]


def spin_node(make: Callable[[Any], Any], argv: Sequence[str],
              on_exit: Callable[[Any], None] | None = None) -> int:
    """rclpy.init on a fresh context, `make(context)`, spin until shutdown, clean up."""
    tune_malloc()
    context = rclpy.Context()
    rclpy.init(args=list(argv), context=context)
    # after init, which installs rclpy's own handlers: those did not end spin() on a context of
    # our own, so a stop request went unseen until the launcher killed the process (a recorder
    # then lost the end of its files); Python's handlers run between the bounded waits below
    signal.signal(signal.SIGINT, raise_keyboard_interrupt)
    signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
    node = make(context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    try:
        while context.ok():
            executor.spin_once(timeout_sec=0.2)
    except (KeyboardInterrupt, ExternalShutdownException, SystemExit):
        pass
    finally:
        if on_exit is not None:
            on_exit(node)
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        context.try_shutdown()
    return 0
