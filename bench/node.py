"""Perception node end to end over DDS: 640x480 camera at 30 Hz + depth 15, LiDAR 10, events 20.

The perception node runs in its own process with the default weights (backend auto: onnxruntime
on CPU), the synthetic rig in another (as a camera driver does); this process only subscribes to
~/labels and /diagnostics and prints (DESIGN.md section 7):
  output_rate_hz      labels per second over the measurement window
  latency_p50_ms      header stamp -> labels received here (same clock, same machine)
  latency_p95_ms
  forward_ms          the node's median model forward time over the same window (its
                      diagnostics give medians over 200 outputs; those tiling the window are
                      combined)
  overhead_p50_ms     latency_p50 - forward: sync wait, decoding, pre/post-processing, transport
  transport_loss_pct  sensor messages the rig published but the node never received
  labels_age_mean_ms  age of the newest labels here, averaged over time (rate and latency in one)
  node_*_p50_ms       the node's own breakdown: receive (stamp -> set complete in the node),
                      wait for the worker, preprocess (decode + model input), postprocess,
                      publish; node_latency_p50_ms = set complete -> published

`--low-latency` (default) sets sync.wait_for_closer:=false and sync.slop:=0.1, so a frame never
waits for a later LiDAR scan; `--exact` keeps the default matching (adds up to one LiDAR period).
All three processes use the Fast DDS shared-memory profile config/fastdds_shm.xml (`--transport`;
LARGE_DATA, TCP over loopback, took 13 ms of node_receive for what the profile does in 3 ms).
The rig replays 30 pre-rendered camera / depth / LiDAR frames with fresh stamps (events are
generated live), as drivers publish without rendering: rendering them live took a third of one
of the two cores from the node under test (`--cache-frames 0` restores it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

# The synthetic rig in its own process: publishes until stdin closes; answers each 'count' line
# on stdin with its per-modality publish counts (one JSON line), for the loss figure.
RIG = """
import json, sys, threading, rclpy
from rclpy.executors import SingleThreadedExecutor
from rmseg_ros.nodes.synthetic_sensors import SyntheticSensors, build_parser
rclpy.init()
node = SyntheticSensors(build_parser().parse_args(sys.argv[1:]))
executor = SingleThreadedExecutor()
executor.add_node(node)
spin = threading.Thread(target=executor.spin, daemon=True)
spin.start()
for line in sys.stdin:
    print(json.dumps(dict(node.count)), flush=True)
executor.shutdown(timeout_sec=1)
spin.join(1)
node.destroy_node()
rclpy.try_shutdown()
"""


def _rig_counts(rig: subprocess.Popen) -> dict[str, int]:
    rig.stdin.write('count\n')
    rig.stdin.flush()
    return json.loads(rig.stdout.readline())


def _window_medians(history: list[dict[str, str]], outputs0: int) -> dict[str, str]:
    """The node's medians over the measurement window, from its pipeline statuses.

    Each status gives medians over its last STATS_WINDOW outputs; the statuses whose windows
    tile the outputs since `outputs0` (the last one ends the run) are combined by the median of
    their values, so forward time and latency come from the same stretch of time."""
    from rmseg_ros.pipeline.diagnostics import STATS_WINDOW

    last = history[-1]
    picked, next_end = [], outputs0 + STATS_WINDOW
    for status in history:
        outputs = int(status.get('outputs') or 0)
        if outputs >= next_end and int(last['outputs']) - outputs >= STATS_WINDOW // 2:
            picked.append(status)
            next_end = outputs + STATS_WINDOW
    picked.append(last)
    merged = dict(last)
    for key in last:
        if key.endswith('_p50_ms'):
            values = [float(s[key]) for s in picked if s.get(key)]
            if values:
                merged[key] = f'{np.median(values):.3f}'
    merged['window_statuses'] = str(len(picked))
    return merged


def main() -> int:
    from rmseg_ros.dds_transport import CHOICES as DDS_TRANSPORTS
    from rmseg_ros.dds_transport import transport_env
    from rmseg_ros.pipeline.freshness import mean_age_of_information

    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--seconds', type=float, default=20.0, help='measurement window')
    ap.add_argument('--warmup', type=float, default=5.0)
    ap.add_argument('--checkpoint', default=str(REPO / 'weights/rmmss_student.safetensors'))
    ap.add_argument('--exact', action='store_true', help='exact (waiting) sync matching')
    ap.add_argument('--width', type=int, default=640)
    ap.add_argument('--height', type=int, default=480)
    ap.add_argument('--transport', choices=DDS_TRANSPORTS, default='shm',
                    help="Fast DDS transport of both processes: 'shm' = config/fastdds_shm.xml "
                         "(16 MiB shared-memory segment), 'inherit', or a built-in set such as "
                         "LARGE_DATA (default 'shm')")
    ap.add_argument('--cache-frames', type=int, default=30,
                    help='frames the rig renders once and replays (0: render every frame)')
    ap.add_argument('--param', action='append', default=[], metavar='NAME:=VALUE',
                    help='extra perception-node parameter (repeatable), e.g. num_threads:=1')
    opts = ap.parse_args()
    os.environ.setdefault('ROS_DOMAIN_ID', '91')
    os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    env = transport_env(os.environ, opts.transport)  # before rclpy.init (read once per process)
    os.environ.clear()
    os.environ.update(env)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(REPO), os.environ.get('PYTHONPATH', '')) if p))
    params = ['-p', f'checkpoint:={opts.checkpoint}', '-p', 'diagnostics_period_s:=0.5',
              '-p', 'qos_reliability:=reliable', '-p', 'qos_depth:=5']
    for extra in opts.param:
        params += ['-p', extra]
    if not opts.exact:
        params += ['-p', 'sync.wait_for_closer:=false', '-p', 'sync.slop:=0.1']
    node = subprocess.Popen([sys.executable, '-m', 'rmseg_ros.nodes.perception_node',
                             '--ros-args', *params], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    rclpy.init()
    rig_args = ['--width', str(opts.width), '--height', str(opts.height), '--camera-info',
                '--rates', '30', '15', '10', '20', '--cache-frames', str(opts.cache_frames)]
    probe = rclpy.create_node('bench_probe')
    lock = threading.Lock()
    arrivals: list[tuple[float, float]] = []  # (monotonic, latency ms)
    diag: dict[str, dict[str, str]] = {}
    history: list[dict[str, str]] = []  # every pipeline status received

    def on_labels(msg: Image) -> None:
        now = probe.get_clock().now().nanoseconds
        stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        with lock:
            arrivals.append((time.monotonic(), (now - stamp) / 1e6))

    def on_diag(msg: DiagnosticArray) -> None:
        with lock:
            for st in msg.status:
                diag[st.name] = {kv.key: kv.value for kv in st.values}
                if st.name == 'perception: pipeline':
                    history.append(diag[st.name])

    probe.create_subscription(Image, '/perception/labels', on_labels,
                              QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
    probe.create_subscription(DiagnosticArray, '/diagnostics', on_diag, 10)
    executor = SingleThreadedExecutor()
    executor.add_node(probe)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    rig = None
    try:
        deadline = time.monotonic() + 180
        while 'perception: pipeline' not in diag:  # configured and active
            if node.poll() is not None or time.monotonic() > deadline:
                print(node.stderr.read() if node.poll() is not None else 'timeout',
                      file=sys.stderr)
                return 1
            time.sleep(0.2)
        # the rig is a process of its own, as a camera driver is: this one only measures
        rig = subprocess.Popen([sys.executable, '-c', RIG, *rig_args], env=env, text=True,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        time.sleep(opts.warmup)
        t0 = time.monotonic()
        with lock:
            base = _rig_counts(rig)
            received0 = {m: int(diag.get(f'perception: modality {m}', {}).get('received', 0))
                         for m in base}
            outputs0 = int(diag['perception: pipeline'].get('outputs') or 0)
        time.sleep(opts.seconds)
        t1 = time.monotonic()
        with lock:
            published = {m: n - base[m] for m, n in _rig_counts(rig).items()}
        rig.stdin.close()  # stop publishing, let the last messages land
        rig.wait(10)
        time.sleep(1.5)
        with lock:
            window = [(t, lat) for t, lat in arrivals if t0 <= t <= t1]
            received = {m: int(diag[f'perception: modality {m}']['received']) - received0[m]
                        for m in base}
            pipeline = _window_medians(history, outputs0)
    finally:
        if rig is not None and rig.poll() is None:
            rig.kill()
        executor.shutdown(timeout_sec=2)
        node.terminate()
        node.wait(10)
        rclpy.try_shutdown()
    if not window:
        print('no labels arrived in the window', file=sys.stderr)
        return 1
    received_at, lat = np.array(window).T
    forward = float(pipeline['forward_p50_ms'])
    sent = sum(published.values())
    lost = max(0, sent - sum(min(received[m], published[m]) for m in published))
    print(f'output_rate_hz: {len(window) / (t1 - t0):.2f} Hz')
    print(f'latency_p50_ms: {np.percentile(lat, 50):.2f} ms')
    print(f'latency_p95_ms: {np.percentile(lat, 95):.2f} ms')
    print(f'forward_ms: {forward:.2f} ms')
    print(f'overhead_p50_ms: {np.percentile(lat, 50) - forward:.2f} ms')
    print(f'transport_loss_pct: {100.0 * lost / max(sent, 1):.3f} %')
    if len(window) > 1:  # what a consumer of the newest labels sees, averaged over time
        age = mean_age_of_information(received_at, received_at - lat / 1e3)
        print(f'labels_age_mean_ms: {age * 1e3:.2f} ms')
    # where the overhead goes (node's own medians); latency_p50 - receive - node_latency is the
    # way back: publishing the labels to this process and its executor picking them up
    for stage in ('receive', 'wait', 'preprocess', 'postprocess', 'publish'):
        value = pipeline.get(f'{stage}_p50_ms', '')
        if value:
            print(f'node_{stage}_p50_ms: {float(value):.2f} ms')
    if pipeline.get('latency_p50_ms'):
        print(f'node_latency_p50_ms: {float(pipeline["latency_p50_ms"]):.2f} ms')
    print(f'# published {published}, received by the node {received}, backend '
          f'{pipeline.get("backend")}, device {pipeline.get("device")}, skipped '
          f'{pipeline.get("skipped_frames")} (for a fresher set '
          f'{pipeline.get("skipped_for_freshness")}), '
          f'sync {"exact" if opts.exact else "low-latency"}, '
          f'LiDAR/event inputs built on arrival {pipeline.get("prepared_inputs_used")} '
          f'(with the set {pipeline.get("prepared_inputs_missed")}), node medians from '
          f'{pipeline["window_statuses"]} diagnostics',
          file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
