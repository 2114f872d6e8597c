"""`bag_replay` node: replays a rosbag2 recording where `ros2 bag play` is not available.

The timing, topic selection, remapping, validation and counting live in the ROS-free
`rmseg_ros.bag_replay`; this shell resolves each recorded type to its rclpy class, creates one
publisher per topic and publishes the recorded CDR bytes unchanged (stamps and data stay
bit-exact). Publishing runs in its own thread that sleeps until each record is due, while the main
thread spins the node (parameter services) and watches for shutdown.

Run:  python -m rmseg_ros.nodes.bag_replay_node BAG --rate 2 --loop
 or:  bag_replay_node --ros-args -p bag:=BAG -p rate:=2.0 -p "remap:=['/a:=/b']"
Exit status: 0 when the bag was played (also after a stop request), 2 when the bag or an option
is unusable, 1 on any other failure.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.publisher import Publisher

from rmseg_ros.bag_replay import (
    BagReplay,
    BagReplayError,
    ReplayCounts,
    ReplayRecord,
    SkippedRecord,
    parse_remap,
)
from rmseg_ros.nodes.common import declare_parameters, make_qos, parameter_values, run_node
from rmseg_ros.params import QOS_RELIABILITIES, ParamSpec, qos_parameters

NODE_NAME = 'bag_replay'
EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2


def _spec(name: str, default: Any, description: str, **kw: Any) -> ParamSpec:
    return ParamSpec(name, default, description, read_only=True, **kw)  # read at start only


PARAMETERS: tuple[ParamSpec, ...] = (
    _spec('bag', '', 'Path of the rosbag2 directory (mcap or sqlite3 storage) to replay, or a '
          'folder holding recordings (the first, sorted by path, is played).'),
    _spec('rate', 1.0, 'Playback speed factor (> 0): 2.0 plays twice as fast.'),
    _spec('loop', False, 'Start again from start_offset when the bag ends.'),
    _spec('start_offset', 0.0, 'Seconds into the bag (from its first record) to start at.'),
    _spec('topics', [], 'Bag topics to replay (names as recorded); unset or empty = all.'),
    _spec('remap', [], "Topic renames as 'from:=to' (from = name in the bag)."),
    _spec('publish_clock', False, 'Publish rosgraph_msgs/Clock on /clock with the recorded log '
          'time of each record, just before it.'),
    *qos_parameters('every data publisher', 'reliable', 50, read_only=True),
    _spec('wait_for_subscribers', 0, 'Before starting, wait until every data publisher has at '
          'least this many subscribers (0 = do not wait), so no early record is lost.'),
    _spec('wait_for_subscribers_timeout', 10.0, 'Seconds to wait for subscribers; then start '
          'anyway with a warning.'),
    _spec('exit_when_done', True, 'Exit (status 0) when the bag has been played; false keeps '
          'the node alive until shutdown.'),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='bag_replay_node',
        description='Replay a rosbag2 recording (mcap or sqlite3) over ROS 2, publishing the '
                    'recorded bytes unchanged. Every option is also a ROS parameter '
                    '(--ros-args -p NAME:=VALUE); an option given here wins.')
    parser.add_argument('bag_path', nargs='?', metavar='BAG', help='rosbag2 directory')
    parser.add_argument('--bag', help='rosbag2 directory (same as BAG)')
    parser.add_argument('--rate', type=float, help='playback speed factor (default 1.0)')
    parser.add_argument('--loop', action='store_true', default=None, help='loop forever')
    parser.add_argument('--start-offset', type=float, metavar='SECONDS',
                        help='start this many seconds into the bag')
    parser.add_argument('--topics', nargs='+', metavar='TOPIC', help='bag topics to replay')
    parser.add_argument('--remap', nargs='+', metavar='FROM:=TO', help='rename topics')
    parser.add_argument('--clock', dest='publish_clock', action='store_true', default=None,
                        help='publish /clock with the recorded time')
    parser.add_argument('--qos', dest='qos_reliability', choices=QOS_RELIABILITIES,
                        help='publisher reliability (qos_reliability)')
    parser.add_argument('--qos-depth', type=int, help='publisher history depth')
    parser.add_argument('--wait-for-subscribers', type=int, metavar='N',
                        help='wait for N subscribers on every topic before starting')
    parser.add_argument('--wait-timeout', dest='wait_for_subscribers_timeout', type=float,
                        metavar='SECONDS', help='how long to wait for subscribers')
    parser.add_argument('--keep-alive', dest='exit_when_done', action='store_false', default=None,
                        help='do not exit when the bag has been played')
    return parser


def split_ros_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(our options, ROS arguments): the ROS ones are the `--ros-args ... [--]` sections.

    Done here rather than with rclpy's remove_ros_args because rcl takes any bare 'a:=b' outside
    those sections for a (deprecated) node remap rule, and `--remap FROM:=TO` is ours.
    """
    ours: list[str] = []
    ros: list[str] = []
    in_ros = False
    for arg in argv:
        if arg == '--ros-args':
            in_ros = True
            ros.append(arg)
        elif in_ros and arg == '--':
            in_ros = False
            ros.append(arg)
        else:
            (ros if in_ros else ours).append(arg)
    return ours, ros


def cli_to_parameters(ns: argparse.Namespace) -> list[Parameter]:
    """The options given on the command line as parameter overrides (unset ones are left out)."""
    values = {k: v for k, v in vars(ns).items() if v is not None and k != 'bag_path'}
    if ns.bag_path is not None:
        if ns.bag is not None and ns.bag != ns.bag_path:
            raise SystemExit('bag_replay_node: give the bag either as BAG or --bag, not both')
        values['bag'] = ns.bag_path
    return [Parameter(name, value=value) for name, value in values.items()]


def resolve_message_class(msgtype: str) -> tuple[type | None, str]:
    """rclpy class for 'pkg/msg/Name' (or 'pkg/Name'), or (None, why it cannot be had)."""
    parts = msgtype.split('/')
    if len(parts) == 3 and parts[1] == 'msg':
        pkg, name = parts[0], parts[2]
    elif len(parts) == 2:
        pkg, name = parts
    else:
        return None, f'unrecognised message type name {msgtype!r}'
    try:
        module = importlib.import_module(pkg + '.msg')
    except ImportError as exc:
        return None, f'{type(exc).__name__}: {exc}'
    cls = getattr(module, name, None)
    if cls is None:
        return None, f'{pkg}.msg has no {name}'
    return cls, ''


def format_summary(counts: ReplayCounts, elapsed_s: float) -> str:
    """One parseable line: totals first, then per-topic counts as JSON."""
    return (f'summary: published={counts.total_published} '
            f'skipped_corrupt={counts.total_corrupt} '
            f'skipped_unknown_type={counts.total_unknown_type} '
            f'passes={counts.passes} elapsed_s={elapsed_s:.3f} '
            f'published_per_topic={json.dumps(counts.published, sort_keys=True)} '
            f'corrupt_per_topic={json.dumps(counts.skipped_corrupt, sort_keys=True)} '
            f'unknown_type_per_topic={json.dumps(counts.skipped_unknown_type, sort_keys=True)} '
            f'damaged_chunks={counts.damaged_chunks} damaged_records={counts.damaged_records} '
            f'damaged_bytes={counts.damaged_bytes} truncated={int(counts.truncated)}')


class BagReplayNode(Node):
    """Opens the bag and creates the publishers on construction; `run()` plays it."""

    def __init__(self, *, context: Any = None,
                 parameter_overrides: list[Parameter] | None = None) -> None:
        super().__init__(NODE_NAME, context=context, parameter_overrides=parameter_overrides)
        declare_parameters(self, PARAMETERS)
        try:
            p = parameter_values(self, PARAMETERS)
        except ValueError as exc:
            raise BagReplayError(f'bad option: {exc}') from None
        self._warned_topics: set[str] = set()
        self.elapsed_s = 0.0

        bag = p['bag']
        if not bag:
            raise BagReplayError("no bag given: pass BAG, --bag or '-p bag:=PATH'")
        rate, start_offset = p['rate'], p['start_offset']
        self.wait_for = p['wait_for_subscribers']
        self.wait_timeout = p['wait_for_subscribers_timeout']
        self.exit_when_done = p['exit_when_done']
        try:
            remap = parse_remap(p['remap'] or [])
            qos = make_qos(p['qos_reliability'], p['qos_depth'])
            self.replay = BagReplay(bag, topics=p['topics'] or [], rate=rate,
                                    start_offset=start_offset, loop=p['loop'],
                                    remap=remap, on_skip=self._on_skip)
        except ValueError as exc:
            raise BagReplayError(f'bad option: {exc}') from None
        self.replay.open()
        if self.replay.path != self.replay.requested:
            others = self.replay.other_bags
            self.get_logger().info(
                f'{bag} is a folder of {1 + len(others)} recording(s): playing '
                f'{self.replay.path}' + (f'; not played: {", ".join(map(str, others))} (name '
                                         'one to play it)' if others else ''))
            bag = str(self.replay.path)

        for problem_type, problem in self.replay.type_problems.items():
            self.get_logger().warning(f'embedded definition of {problem_type} unusable, using '
                                      f'the built-in one: {problem}')
        for missing in self.replay.missing_topics:
            self.get_logger().warning(f'topic {missing} is not in the bag {bag}')

        self.publishers_by_topic: dict[str, Publisher] = {}
        self.skip_types: set[str] = set()
        for summary in self.replay.selected_topics:
            cls, why = resolve_message_class(summary.msgtype)
            if cls is None:
                self.skip_types.add(summary.msgtype)
                self._warn_topic(summary.topic, f'topic {summary.bag_topic}: type '
                                 f'{summary.msgtype} cannot be published here ({why}); its '
                                 f'{summary.count} records are skipped')
                continue
            self.publishers_by_topic[summary.topic] = self.create_publisher(
                cls, summary.topic, qos)
        self.clock_pub = None
        if p['publish_clock']:
            from rosgraph_msgs.msg import Clock
            self.clock_pub = self.create_publisher(Clock, '/clock', 10)
            self._clock_msg = Clock()

        topics = ', '.join(
            f'{t.bag_topic}' + (f' -> {t.topic}' if t.topic != t.bag_topic else '')
            + f' [{t.msgtype}, {t.count}]' for t in self.replay.selected_topics)
        self.get_logger().info(
            f'start: bag={bag} topics=({topics or "none"}) duration_s='
            f'{self.replay.duration_s:.3f} start_offset_s={start_offset:g} rate={rate:g} '
            f'loop={self.replay.loop} clock={self.clock_pub is not None}')

    # -- reporting -------------------------------------------------------------------------
    def _warn_topic(self, topic: str, text: str) -> None:
        if topic not in self._warned_topics:
            self._warned_topics.add(topic)
            self.get_logger().warning(text)

    def _on_skip(self, skipped: SkippedRecord) -> None:
        if skipped.reason == 'corrupt':
            self.get_logger().warning(
                f'skipping corrupt record on {skipped.topic} ({skipped.msgtype}) at log time '
                f'{skipped.log_time_ns} ns: {skipped.detail}', throttle_duration_sec=1.0)
        elif skipped.msgtype not in self.skip_types:  # those were announced when starting
            self._warn_topic(skipped.topic, f'skipping records of {skipped.topic}: '
                             f'{skipped.msgtype}: {skipped.detail}')

    # -- playing ---------------------------------------------------------------------------
    def wait_for_subscribers(self, stop: threading.Event) -> bool:
        """Wait until each data publisher has `wait_for_subscribers` subscribers; False when
        the timeout ran out (playback then starts anyway) or a stop was requested."""
        if self.wait_for <= 0 or not self.publishers_by_topic:
            return True
        deadline = time.monotonic() + self.wait_timeout
        while not stop.is_set():
            short = {t: p.get_subscription_count() for t, p in self.publishers_by_topic.items()
                     if p.get_subscription_count() < self.wait_for}
            if not short:
                return True
            if time.monotonic() >= deadline:
                self.get_logger().warning(
                    f'gave up waiting for {self.wait_for} subscriber(s) after '
                    f'{self.wait_timeout:g} s; still short: {short}; starting anyway')
                return False
            stop.wait(0.05)
        return False

    def _publish(self, record: ReplayRecord) -> None:
        if self.clock_pub is not None:
            self._clock_msg.clock.sec, self._clock_msg.clock.nanosec = divmod(
                record.log_time_ns, 1_000_000_000)
            self.clock_pub.publish(self._clock_msg)
        self.publishers_by_topic[record.topic].publish(record.data)

    def run(self, stop: threading.Event) -> ReplayCounts:
        """Play the bag (blocking) until it ends or `stop` is set; log the summary line."""
        t0 = time.monotonic()
        try:
            self.wait_for_subscribers(stop)
            if not stop.is_set():
                self.replay.play(self._publish, skip_types=self.skip_types, wait=stop.wait)
        finally:
            self.elapsed_s = time.monotonic() - t0
            self.get_logger().info(format_summary(self.replay.counts, self.elapsed_s))
        return self.replay.counts

    def destroy_node(self) -> None:
        self.replay.close()
        super().destroy_node()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    ours, ros_args = split_ros_args(argv[1:])
    ns = build_parser().parse_args(ours)  # --help exits here, before ROS starts
    overrides = cli_to_parameters(ns)

    def body(node: BagReplayNode, spin: Any) -> int:
        """Play on a thread of its own while the executor spins (parameter services); a stop
        request (KeyboardInterrupt from SIGINT/SIGTERM) ends playback, and the summary line is
        still written."""
        stop = threading.Event()
        failure: list[BaseException] = []

        def work() -> None:
            try:
                node.run(stop)
            except BaseException as exc:  # reported by the main thread
                failure.append(exc)

        worker = threading.Thread(target=work, name='bag_replay', daemon=True)
        worker.start()
        try:
            spin(until=lambda: not worker.is_alive())
            if worker.is_alive():  # shutdown requested while playing
                stop.set()
            worker.join()
        except KeyboardInterrupt:
            stop.set()
            worker.join(timeout=5.0)
            return EXIT_OK
        if failure:
            exc = failure[0]
            node.get_logger().error(f'replay failed: {type(exc).__name__}: {exc}')
            return EXIT_BAD_INPUT if isinstance(exc, BagReplayError) else EXIT_FAILURE
        if not node.exit_when_done:
            spin()
        return EXIT_OK

    return run_node(
        lambda context: BagReplayNode(context=context, parameter_overrides=overrides),
        argv[:1] + ros_args, name=NODE_NAME, body=body,
        start_failure=lambda exc: EXIT_BAD_INPUT if isinstance(exc, BagReplayError)
        else EXIT_FAILURE)


if __name__ == '__main__':
    sys.exit(main())
