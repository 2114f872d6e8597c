"""The perception node's callbacks never let an exception reach the executor (issue 21): a bad
CameraInfo is rejected and the last valid one kept, a NaN event time or any failure in a
callback is counted per input and kind, and configure reports why it failed."""

from __future__ import annotations

import numpy as np
import pytest
from sensor_msgs.msg import CameraInfo

from rmseg_ros import conversions

pytestmark = pytest.mark.ros


def _camera_info(width=160, height=120):
    f = 100.0
    return CameraInfo(width=width, height=height, distortion_model='plumb_bob',
                      k=[f, 0.0, width / 2, 0.0, f, height / 2, 0.0, 0.0, 1.0], d=[0.0] * 5,
                      r=np.eye(3).ravel().tolist())


@pytest.fixture
def node(tiny_checkpoint, rclpy_context):
    from rclpy.parameter import Parameter

    from rmseg_ros.nodes.perception_node import SUCCESS, PerceptionNode

    overrides = [Parameter('autostart', value=False),
                 Parameter('checkpoint', value=str(tiny_checkpoint)),
                 Parameter('backend', value='torch'), Parameter('device', value='cpu'),
                 Parameter('checks.max_age_s', value=0.0),
                 Parameter('checks.max_future_s', value=0.0)]
    n = PerceptionNode(context=rclpy_context, parameter_overrides=overrides)
    assert n.trigger_configure() == SUCCESS and n.trigger_activate() == SUCCESS
    yield n
    n.trigger_deactivate()
    n.destroy_node()


def _callback(node, topic):
    return next(s.callback for s in node._subs if s.topic_name == topic)


def test_callbacks_reject_bad_messages_and_never_raise(node):
    on_info = _callback(node, '/camera/camera_info')
    on_info(_camera_info())
    good = node._geometry.current.camera
    assert good is not None and good.width == 160
    for bad in (_camera_info(0, 120), _camera_info(4294967295, 4294967295),
                _camera_info(100000, 100000)):
        on_info(bad)  # must not raise, must not replace the camera
    assert node._geometry.current.camera is good
    assert node.stats.problems[('camera_info', 'invalid')] == 3

    arr = np.zeros(1, dtype=[('x', '<u2'), ('y', '<u2'), ('t', '<f8'), ('p', 'i1')])
    arr['t'] = np.nan
    cloud = conversions.array_to_pointcloud2(arr)
    cloud.header.stamp.sec = 1
    _callback(node, '/events')(cloud)  # goes to the synchroniser; nothing escapes

    class Broken:  # a message no conversion can read: any exception, not only ValueError
        def __getattr__(self, name):
            raise RuntimeError(f'no {name}')

    _callback(node, '/lidar/points')(Broken())
    _callback(node, '/camera/camera_info')(Broken())
    assert node.stats.problems[('lidar', 'exception.RuntimeError')] == 1
    assert node.stats.problems[('camera_info', 'invalid')] == 4  # the gate's own rejection
    assert node._geometry.current.camera is good


def test_event_sensor_size_beyond_the_limits_fails_configure(tiny_checkpoint, rclpy_context):
    from rclpy.parameter import Parameter

    from rmseg_ros.nodes.perception_node import FAILURE, PerceptionNode

    n = PerceptionNode(context=rclpy_context, parameter_overrides=[
        Parameter('autostart', value=False), Parameter('checkpoint', value=str(tiny_checkpoint)),
        Parameter('event_sensor_size', value=[4294967295.0, 4294967295.0])])
    assert n.trigger_configure() == FAILURE
    n.destroy_node()


def test_configure_reports_any_load_failure_and_refuses(tiny_checkpoint, rclpy_context,
                                                        tmp_path, monkeypatch):
    from rclpy.parameter import Parameter

    from rmseg_ros.inference.segmenter import Segmenter
    from rmseg_ros.nodes.perception_node import FAILURE, PerceptionNode

    def node(checkpoint):
        return PerceptionNode(context=rclpy_context, parameter_overrides=[
            Parameter('autostart', value=False), Parameter('checkpoint', value=str(checkpoint)),
            Parameter('backend', value='torch')])

    logged: list[str] = []
    directory = node(tmp_path)
    monkeypatch.setattr(type(directory.get_logger()), 'error',
                        lambda self, text, **kw: logged.append(text))
    assert directory.trigger_configure() == FAILURE
    assert 'is a directory' in logged[-1]
    directory.destroy_node()

    def out_of_memory(*args, **kwargs):
        raise RuntimeError('DefaultCPUAllocator: not enough memory')

    monkeypatch.setattr(Segmenter, 'from_checkpoint', out_of_memory)
    oom = node(tiny_checkpoint)
    assert oom.trigger_configure() == FAILURE
    assert 'RuntimeError: DefaultCPUAllocator' in logged[-1]
    oom.destroy_node()


def test_event_packets_are_subscribed_where_event_camera_msgs_exists(tiny_checkpoint,
                                                                    rclpy_context, monkeypatch):
    import importlib.util

    from rclpy.parameter import Parameter

    from rmseg_ros.nodes.perception_node import FAILURE, SUCCESS, PerceptionNode

    n = PerceptionNode(context=rclpy_context, parameter_overrides=[
        Parameter('autostart', value=False), Parameter('checkpoint', value=str(tiny_checkpoint)),
        Parameter('backend', value='torch'), Parameter('event_format', value='packet')])
    if importlib.util.find_spec('event_camera_msgs') is None:
        logged: list[str] = []
        monkeypatch.setattr(type(n.get_logger()), 'error',
                            lambda self, text, **kw: logged.append(text))
        assert n.trigger_configure() == FAILURE
        assert 'event_camera_msgs' in logged[-1] and "'packet'" in logged[-1]
    else:
        from event_camera_msgs.msg import EventPacket

        assert n.trigger_configure() == SUCCESS and n.trigger_activate() == SUCCESS
        sub = next(s for s in n._subs if s.topic_name == '/events')
        assert sub.msg_type is EventPacket
        n.trigger_deactivate()
    n.destroy_node()
