"""Conversions on messages that crossed real DDS from another process: a padded rgb8 Image, an
organised PointCloud2 with mixed field types and padding, and a CameraInfo, all built byte by byte
by the publisher from a seed and compared bit for bit with the same data regenerated here."""

from __future__ import annotations

import inspect
import textwrap
import time

import numpy as np
import pytest

from rmseg_ros.conversions import (
    camera_info_to_intrinsics,
    image_to_numpy,
    pointcloud2_to_array,
)

SEED = 20240607
TIMEOUT_S = 25.0


def make_payload(seed: int) -> dict:
    """Seeded content and its wire bytes, written without rmseg_ros (runs in both processes)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    height, width = 480, 640
    step = width * 3 + 64
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    rows = np.full((height, step), 0xCD, dtype=np.uint8)  # junk in the row padding
    rows[:, :width * 3] = pixels.reshape(height, width * 3)

    # Organised cloud 16 x 256, 32-byte points (7 bytes of padding in between and at the end)
    # and 16 bytes of padding after every row. Little-endian on the wire.
    c_h, c_w, point_step = 16, 256, 32
    row_step = c_w * point_step + 16
    layout = [('x', 0, 7, '<f4'), ('y', 4, 7, '<f4'), ('z', 8, 7, '<f4'), ('ring', 12, 2, 'u1'),
              ('t', 16, 8, '<f8'), ('strength', 24, 3, '<i2')]
    values = {
        'x': rng.normal(0, 20, (c_h, c_w)).astype(np.float32),
        'y': rng.normal(0, 20, (c_h, c_w)).astype(np.float32),
        'z': rng.normal(0, 2, (c_h, c_w)).astype(np.float32),
        'ring': np.repeat(np.arange(c_h, dtype=np.uint8)[:, None], c_w, axis=1),
        't': rng.random((c_h, c_w)),
        'strength': rng.integers(-32768, 32768, (c_h, c_w), dtype=np.int16),
    }
    values['x'][3, 5] = np.nan
    cloud = np.full((c_h, row_step), 0xEE, dtype=np.uint8)
    points = cloud[:, :c_w * point_step].reshape(c_h, c_w, point_step)
    for name, offset, _, wire in layout:
        raw = values[name].astype(wire).view(np.uint8).reshape(c_h, c_w, -1)
        points[:, :, offset:offset + raw.shape[2]] = raw

    camera = {
        'k': [525.0 + rng.random(), 0.0, 319.5, 0.0, 525.0, 239.5, 0.0, 0.0, 1.0],
        'd': rng.normal(0, 0.1, 5).tolist(),
        'r': np.eye(3).ravel().tolist(),
        'p': [520.0, 0.0, 320.0, -37.5, 0.0, 520.0, 240.0, 0.0, 0.0, 0.0, 1.0, 0.0],
    }
    return {'pixels': pixels, 'image_step': step, 'image_bytes': rows.tobytes(),
            'cloud_shape': (c_h, c_w), 'point_step': point_step, 'row_step': row_step,
            'layout': layout, 'values': values, 'cloud_bytes': cloud.tobytes(),
            'camera': camera}


PUBLISHER = '''
import time
import rclpy
from rclpy.signals import SignalHandlerOptions
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField

rclpy.init(signal_handler_options=SignalHandlerOptions.NO)  # SIGTERM ends the process
node = rclpy.create_node('conversions_publisher')
qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5,
                 reliability=ReliabilityPolicy.RELIABLE,
                 durability=DurabilityPolicy.TRANSIENT_LOCAL)
pubs = [node.create_publisher(Image, 'conv/image', qos),
        node.create_publisher(PointCloud2, 'conv/points', qos),
        node.create_publisher(CameraInfo, 'conv/camera_info', qos)]
p = make_payload(SEED)

img = Image(height=480, width=640, encoding='rgb8', is_bigendian=0, step=p['image_step'])
img.header.frame_id = 'camera'
img.data = p['image_bytes']
cloud = PointCloud2(height=p['cloud_shape'][0], width=p['cloud_shape'][1], is_bigendian=False,
                    point_step=p['point_step'], row_step=p['row_step'], is_dense=False)
cloud.header.frame_id = 'lidar'
cloud.fields = [PointField(name=n, offset=o, datatype=d, count=1) for n, o, d, _ in p['layout']]
cloud.data = p['cloud_bytes']
info = CameraInfo(width=640, height=480, distortion_model='plumb_bob', **p['camera'])

deadline = time.monotonic() + 40.0
while time.monotonic() < deadline and any(pub.get_subscription_count() == 0 for pub in pubs):
    time.sleep(0.05)
for pub, msg in zip(pubs, (img, cloud, info)):
    pub.publish(msg)
print('published', flush=True)
# Stay until the listener has gone (it destroys its node after receiving), then exit.
while time.monotonic() < deadline and any(pub.get_subscription_count() for pub in pubs):
    time.sleep(0.05)
node.destroy_node()
rclpy.shutdown()
'''


@pytest.mark.ros
def test_messages_from_another_process_convert_bit_exactly(rclpy_context, spawn_python):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2

    qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5,
                     reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
    node = rclpy.create_node('conversions_listener', context=rclpy_context)
    executor = SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(node)
    received: dict[str, object] = {}
    for key, msg_type, topic in [('image', Image, 'conv/image'),
                                 ('points', PointCloud2, 'conv/points'),
                                 ('info', CameraInfo, 'conv/camera_info')]:
        node.create_subscription(msg_type, topic,
                                 lambda msg, key=key: received.setdefault(key, msg), qos)

    code = textwrap.dedent(inspect.getsource(make_payload)) + f'\nSEED = {SEED}\n' + PUBLISHER
    child = spawn_python(code)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while len(received) < 3 and time.monotonic() < deadline and child.poll() is None:
            executor.spin_once(timeout_sec=0.1)
        if len(received) < 3:
            err = child.stderr.read() if child.poll() is not None else '(still running)'
            pytest.fail(f'received only {sorted(received)} within {TIMEOUT_S} s; child: {err}')
    finally:
        executor.shutdown()
        node.destroy_node()

    expected = make_payload(SEED)

    img = received['image']
    assert (img.step, img.encoding, img.header.frame_id) == (640 * 3 + 64, 'rgb8', 'camera')
    pixels = image_to_numpy(img)
    assert pixels.shape == (480, 640, 3) and pixels.dtype == np.uint8
    assert np.array_equal(pixels, expected['pixels'])
    assert np.shares_memory(pixels, np.frombuffer(img.data, np.uint8))  # no copy on receipt

    cloud = received['points']
    arr = pointcloud2_to_array(cloud)
    assert arr.shape == expected['cloud_shape']
    assert arr.dtype.itemsize == expected['point_step']
    for name, _, _, wire in expected['layout']:
        assert arr.dtype[name] == np.dtype(wire).newbyteorder('=')
        want = expected['values'][name]
        assert np.ascontiguousarray(arr[name]).tobytes() == want.astype(arr.dtype[name]).tobytes()
    xyz_only = pointcloud2_to_array(cloud, fields=['z', 'x'])
    assert xyz_only.dtype.names == ('z', 'x')
    assert np.array_equal(xyz_only['z'], expected['values']['z'])

    intr = camera_info_to_intrinsics(received['info'])
    cam = expected['camera']
    assert (intr.width, intr.height, intr.distortion_model) == (640, 480, 'plumb_bob')
    assert np.array_equal(intr.K, np.reshape(cam['k'], (3, 3)))
    assert np.array_equal(intr.D, cam['d'])
    assert np.array_equal(intr.R, np.eye(3))
    assert np.array_equal(intr.P, np.reshape(cam['p'], (3, 4)))
