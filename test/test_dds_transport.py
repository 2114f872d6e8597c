"""The Fast DDS shared-memory profile: which environment each choice gives, and that 640x480
frames at 30 Hz cross between two processes with it, best effort, without loss."""

from __future__ import annotations

import json
import textwrap
import xml.etree.ElementTree as ET

import pytest

from rmseg_ros.config import config_path
from rmseg_ros.dds_transport import (
    BUILTIN_VAR,
    CHOICES,
    PROFILE_VAR,
    SHM_PROFILE,
    transport_env,
)

NS = '{http://www.eprosima.com}'


def test_profile_gives_shared_memory_room_for_a_depth_frame():
    root = ET.parse(config_path(SHM_PROFILE)).getroot()
    shm = [d for d in root.iter(f'{NS}transport_descriptor') if d.findtext(f'{NS}type') == 'SHM']
    assert len(shm) == 1
    segment = int(shm[0].findtext(f'{NS}segment_size'))
    assert segment >= 4 * 640 * 480 * 4  # several 32FC1 640x480 depth images in flight
    assert int(shm[0].findtext(f'{NS}maxMessageSize')) <= segment  # else Fast DDS refuses it
    participant = root.find(f'.//{NS}participant')
    assert participant.get('is_default_profile') == 'true'  # rmw takes the default profile
    used = {t.text for t in participant.iter(f'{NS}transport_id')}
    ids = {d.findtext(f'{NS}transport_id') for d in root.iter(f'{NS}transport_descriptor')}
    assert used == ids and len(used) == 2  # shared memory plus UDPv4 (discovery, other hosts)
    assert participant.findtext(f'.//{NS}useBuiltinTransports') == 'false'


def test_transport_env_choices():
    base = {'PATH': '/bin', BUILTIN_VAR: 'LARGE_DATA'}
    shm = transport_env(base, 'shm')
    assert shm[PROFILE_VAR] == str(config_path(SHM_PROFILE)) and BUILTIN_VAR not in shm
    assert base == {'PATH': '/bin', BUILTIN_VAR: 'LARGE_DATA'}  # the caller's dict is untouched
    own = {PROFILE_VAR: '/etc/robot/dds.xml', BUILTIN_VAR: 'UDPv4'}
    assert transport_env(own, 'shm') == own  # a profile the user chose is theirs
    assert transport_env(own, 'inherit') == own
    large = transport_env(own, 'LARGE_DATA')
    assert large == {BUILTIN_VAR: 'LARGE_DATA'}
    assert set(CHOICES) >= {'shm', 'inherit', 'LARGE_DATA', 'DEFAULT'}
    with pytest.raises(ValueError, match='unknown DDS transport'):
        transport_env(base, 'TCP')


PUBLISHER = textwrap.dedent('''
    import time, numpy as np, rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image
    rclpy.init()
    node = rclpy.create_node('shm_pub')
    pub = node.create_publisher(Image, 'shm_test/image', qos_profile_sensor_data)
    deadline = time.monotonic() + 20
    while pub.get_subscription_count() < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # let the subscriber's side of the match settle
    pixels = np.random.default_rng(0).integers(0, 256, (480, 640, 3), np.uint8).tobytes()
    for i in range(N):
        msg = Image(height=480, width=640, encoding='rgb8', step=1920, data=pixels)
        msg.header.frame_id = str(i)
        pub.publish(msg)
        time.sleep(1 / 30)
    time.sleep(1.0)
''')

SUBSCRIBER = textwrap.dedent('''
    import json, time, rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image
    rclpy.init()
    node = rclpy.create_node('shm_sub')
    got = set()
    sizes = set()
    def on(msg):
        got.add(int(msg.header.frame_id))
        sizes.add(len(msg.data))
    node.create_subscription(Image, 'shm_test/image', on, qos_profile_sensor_data)
    deadline = time.monotonic() + 40
    while len(got) < N and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.1)
        if got and max(got) == N - 1:
            end = time.monotonic() + 1.0
            while time.monotonic() < end:
                rclpy.spin_once(node, timeout_sec=0.05)
            break
    print(json.dumps({'received': len(got), 'sizes': sorted(sizes)}))
''')


@pytest.mark.ros
@pytest.mark.slow  # best effort under a loaded host may drop frames: a measurement, not a gate
def test_best_effort_640x480_frames_cross_processes_over_the_profile(spawn_python):
    n = 60
    env = transport_env({}, 'shm')
    sub = spawn_python(f'N = {n}\n' + SUBSCRIBER, env=env)
    pub = spawn_python(f'N = {n}\n' + PUBLISHER, env=env)
    out, err = sub.communicate(timeout=60)
    pub.wait(30)
    assert sub.returncode == 0, err[-2000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result['sizes'] == [640 * 480 * 3]
    # over Fast DDS's default transport this test received none of them here (and a longer
    # stream ~55%): 900 KiB samples do not fit its 512 KiB shared-memory segment
    assert result['received'] >= n - 2, result
