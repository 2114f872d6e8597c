"""`rmseg-bringup`: runs the graph of `perception.launch.py` where `ros2 launch` is absent.

Both read `rmseg_ros.graph.build_graph`, so they start the same nodes with the same parameters.
Default: one process per node (`python -m <module> --ros-args -r __node:=NAME -r __ns:=NS
--params-file FILE`), as launch does; `--single-process` runs every node in this process on one
multi-threaded executor (less memory, one log stream). With `--bag`, bringup ends when the bag
has been played (after `--linger` seconds for the last outputs), so it can drive demos and tests.
When a required node dies the others are stopped and bringup exits with that node's status
(128 + N for signal N), as the launch file does: both follow `rmseg_ros.graph.on_node_exit`.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from rmseg_ros.dds_transport import BUILTIN_VAR, PROFILE_VAR, transport_env
from rmseg_ros.dds_transport import CHOICES as DDS_TRANSPORTS
from rmseg_ros.graph import LAUNCH_ARGUMENTS, NodeSpec, build_graph, on_node_exit
from rmseg_ros.runtime import tune_malloc


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog='rmseg-bringup', description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, (default, help_text) in LAUNCH_ARGUMENTS.items():
        flag = '--' + name.replace('_', '-')
        if name == 'use_robotseg':
            ap.add_argument(flag, action='store_true', help=help_text)
        else:
            ap.add_argument(flag, default=default, help=f'{help_text} (default {default!r})')
    ap.add_argument('--single-process', action='store_true',
                    help='run every node in this process instead of one process per node')
    ap.add_argument('--linger', type=float, default=3.0,
                    help='with --bag: seconds to keep the graph up after the bag ends')
    ap.add_argument('--dds-transport', choices=DDS_TRANSPORTS, default='shm',
                    help="Fast DDS transport of the nodes: 'shm' = config/fastdds_shm.xml "
                         "(16 MiB shared memory, unless FASTDDS_DEFAULT_PROFILES_FILE is set), "
                         "'inherit' = this environment as it is, or a built-in set "
                         "(default 'shm')")
    ap.add_argument('--print', dest='print_only', action='store_true',
                    help='print the Fast DDS environment, nodes and parameters that would run '
                         '(YAML), then exit')
    ap.add_argument('--param', action='append', default=[], metavar='NODE:NAME:=VALUE',
                    help='extra parameter override (YAML value), e.g. perception:sync.slop:=0.1')
    return ap


def graph_from_args(args: argparse.Namespace) -> list[NodeSpec]:
    nodes = build_graph(config=args.config, device=args.device,
                        use_robotseg=args.use_robotseg, bag=args.bag,
                        namespace=args.namespace, checkpoint=args.checkpoint)
    by_name = {n.name: n for n in nodes}
    for item in args.param:
        try:
            node, rest = item.split(':', 1)
            name, value = rest.split(':=', 1)
        except ValueError:
            raise SystemExit(f'rmseg-bringup: --param {item!r} is not NODE:NAME:=VALUE') from None
        if node not in by_name:
            raise SystemExit(f'rmseg-bringup: --param for unknown node {node!r}; '
                             f'nodes: {sorted(by_name)}')
        by_name[node].parameters[name] = yaml.safe_load(value)
    return nodes


def params_file(spec: NodeSpec, directory: Path) -> Path:
    """A ROS 2 parameters YAML for one node (what launch_ros writes for `parameters=[dict]`)."""
    path = directory / f'{spec.name}.params.yaml'
    path.write_text(yaml.safe_dump({'/**': {'ros__parameters': spec.parameters}},
                                   sort_keys=True))
    return path


def command(spec: NodeSpec, directory: Path) -> list[str]:
    """The child process running one node."""
    cmd = [sys.executable, '-m', spec.module, '--ros-args', '-r', f'__node:={spec.name}']
    if spec.namespace:
        cmd += ['-r', f'__ns:=/{spec.namespace.strip("/")}']
    for src, dst in spec.remappings:
        cmd += ['-r', f'{src}:={dst}']
    if spec.parameters:
        cmd += ['--params-file', str(params_file(spec, directory))]
    return cmd


def _run_processes(nodes: list[NodeSpec], linger: float, env: dict[str, str]) -> int:
    env = dict(env)
    repo = str(Path(__file__).resolve().parents[1])
    env['PYTHONPATH'] = os.pathsep.join(p for p in (repo, env.get('PYTHONPATH', '')) if p)
    procs: dict[str, subprocess.Popen] = {}
    specs = {spec.name: spec for spec in nodes}
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    status = 0
    with tempfile.TemporaryDirectory(prefix='rmseg-bringup-') as tmp:
        # the replay waits for subscribers, so it may start first or last
        for spec in nodes:
            cmd = command(spec, Path(tmp))
            procs[spec.name] = subprocess.Popen(cmd, env=env)
            print(f'[rmseg-bringup] started {spec.name} (pid {procs[spec.name].pid}): '
                  f'{" ".join(cmd)}', flush=True)
        try:
            status = _supervise(procs, specs, linger, stop)
        except KeyboardInterrupt:
            pass
        finally:
            for p in procs.values():
                if p.poll() is None:
                    p.send_signal(signal.SIGINT)
            deadline = time.monotonic() + 10
            for p in procs.values():
                try:
                    p.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
    return status


def _supervise(procs: dict[str, subprocess.Popen], specs: dict[str, NodeSpec], linger: float,
               stop: threading.Event) -> int:
    """Poll the children until the exit policy (graph.on_node_exit) or a signal stops the graph;
    the graph's exit status. A failure during a linger still counts."""
    seen: set[str] = set()
    status = 0
    stop_at: float | None = None
    while not stop.is_set():
        for name, proc in procs.items():
            if name in seen or proc.poll() is None:
                continue
            seen.add(name)
            decision = on_node_exit(specs[name], proc.returncode, linger_s=linger)
            print(f'[rmseg-bringup] {decision.message}', flush=True)
            if not decision.stop:
                continue
            if decision.status != 0:
                return decision.status
            when = time.monotonic() + decision.delay_s
            stop_at = when if stop_at is None else min(stop_at, when)
        if stop_at is not None and time.monotonic() >= stop_at:
            return status
        stop.wait(0.1)
    return status


def _make_node(spec: NodeSpec, context: Any) -> Any:
    from rclpy.parameter import Parameter

    overrides = [Parameter(k, value=v) for k, v in spec.parameters.items()]
    if spec.executable == 'perception_node':
        from rmseg_ros.nodes.perception_node import PerceptionNode

        return PerceptionNode(context=context, node_name=spec.name, namespace=spec.namespace,
                              parameter_overrides=overrides)
    if spec.executable == 'bag_replay_node':
        from rmseg_ros.nodes.bag_replay_node import BagReplayNode

        return BagReplayNode(context=context, parameter_overrides=overrides)
    if spec.executable == 'robotseg_node':
        from rmseg_ros.nodes.robotseg_node import RobotSegNode

        return RobotSegNode(context=context, parameter_overrides=overrides)
    raise ValueError(f'bringup does not know how to start {spec.executable}')


def _run_single(nodes: list[NodeSpec], linger: float) -> int:
    """Every node on one executor. A node that cannot start, or a replay that fails, is a
    required node dying: the graph stops with the status its own process would have had."""
    import rclpy
    from rclpy.executors import MultiThreadedExecutor

    from rmseg_ros.nodes.perception_node import SUCCESS

    context = rclpy.Context()
    tune_malloc()  # as each node process does (nodes/runner.py)
    rclpy.init(context=context)
    executor = MultiThreadedExecutor(context=context)
    made = []
    replay_thread = None
    replay_failure: list[BaseException] = []
    stop = threading.Event()
    status = 0

    def replay(node: Any) -> None:
        try:
            node.run(stop)
        except BaseException as exc:  # reported by the main thread
            replay_failure.append(exc)

    try:
        for spec in nodes:
            try:
                node = _make_node(spec, context)
            except Exception as exc:  # e.g. the bag cannot be read
                print(f'[rmseg-bringup] {spec.name} cannot start: {exc}', flush=True)
                return on_node_exit(spec, 2).status
            made.append(node)
            executor.add_node(node)
            if spec.executable == 'perception_node' and node.get_parameter('autostart').value:
                if node.trigger_configure() != SUCCESS or node.trigger_activate() != SUCCESS:
                    decision = on_node_exit(spec, 2)
                    print(f'[rmseg-bringup] {spec.name}: autostart failed; {decision.message}',
                          flush=True)
                    return decision.status
            if spec.executable == 'bag_replay_node':
                replay_thread = threading.Thread(target=replay, args=(node,), daemon=True)
        if replay_thread is not None:
            replay_thread.start()
        spin = threading.Thread(target=executor.spin, daemon=True)
        spin.start()
        while replay_thread is None or replay_thread.is_alive():
            time.sleep(0.2)
        if replay_failure:
            failed = replay_failure[0]
            print(f'[rmseg-bringup] bag replay failed: {type(failed).__name__}: {failed}',
                  flush=True)
            return 2
        time.sleep(linger)
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        for node in made:
            worker = getattr(node, 'worker', None)
            if worker is not None:
                worker.stop()
        executor.shutdown(timeout_sec=2.0)
        for node in made:
            node.destroy_node()
        context.try_shutdown()
    return status


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    nodes = graph_from_args(args)
    env = transport_env(os.environ, args.dds_transport)
    if args.print_only:
        dds = {k: env[k] for k in (PROFILE_VAR, BUILTIN_VAR) if env.get(k)}
        print(yaml.safe_dump({'environment': dds, 'nodes': [
            {'name': n.name, 'executable': n.executable, 'namespace': n.namespace,
             'remappings': n.remappings, 'parameters': n.parameters} for n in nodes]},
            sort_keys=False))
        return 0
    if args.single_process:
        os.environ.clear()
        os.environ.update(env)  # before rclpy.init: Fast DDS reads it at the first participant
        return _run_single(nodes, args.linger)
    return _run_processes(nodes, args.linger, env)


if __name__ == '__main__':
    sys.exit(main())
