"""synthetic_sensors --cache-frames: replays pre-rendered frames with fresh, increasing stamps."""

from __future__ import annotations

import time

from rmseg_ros.nodes.synthetic_sensors import SyntheticSensors, build_parser


def _stamp(msg) -> int:
    return msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec


def test_cached_frames_replay_with_fresh_stamps(rclpy_context):
    opts = build_parser().parse_args(['--width', '64', '--height', '48', '--cache-frames', '2',
                                      '--modalities', 'rgb', 'lidar', 'event'])
    node = SyntheticSensors(opts, rclpy_context)
    sent: dict[str, list] = {m: [] for m in ('rgb', 'lidar', 'event')}
    try:
        for m in sent:
            node.pubs[m].publish = lambda msg, m=m: sent[m].append((msg, _stamp(msg),
                                                                     bytes(msg.data)))
        for _ in range(5):
            for m, hz in (('rgb', 30.0), ('lidar', 10.0), ('event', 20.0)):
                node._tick(m, hz)
            node.t0 -= 0.5  # rig time moves on: the robot arm is elsewhere next round
            time.sleep(0.002)
    finally:
        node.destroy_node()
    rgb = sent['rgb']
    assert len(node.cached['rgb']) == 2 and 'event' not in node.cached  # events stay live
    assert rgb[2][0] is rgb[0][0] and rgb[3][0] is rgb[1][0]  # frames 0, 1, 0, 1, 0
    assert rgb[2][2] == rgb[0][2] and rgb[1][2] != rgb[0][2]  # two distinct images, replayed
    stamps = [s for _, s, _ in rgb]
    assert stamps == sorted(stamps) and len(set(stamps)) == 5  # fresh stamp every publish
    assert [s for _, s, _ in sent['lidar']] == sorted(s for _, s, _ in sent['lidar'])
    assert len({id(msg) for msg, _, _ in sent['event']}) == 5  # rendered each time
