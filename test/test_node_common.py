"""The node toolkit (rmseg_ros.params, rmseg_ros.nodes.common) and the device policy
(rmseg_ros.inference.device): one parameter vocabulary and one set of checks for every node."""

from __future__ import annotations

import logging

import pytest
import torch

from rmseg_ros.inference.device import is_cuda_failure, resolve_backend, resolve_device
from rmseg_ros.params import ParamSpec, coerce, qos_parameters, read_parameters, spec_table


def test_values_take_their_defaults_type_and_choices_name_the_parameter() -> None:
    rate = ParamSpec('rate', 1.0, 'speed')
    assert coerce(rate, 2) == 2.0 and isinstance(coerce(rate, 2), float)  # `rate:=2`
    with pytest.raises(ValueError, match="'rate' must be a number"):
        coerce(rate, True)
    with pytest.raises(ValueError, match="'loop' must be true or false"):
        coerce(ParamSpec('loop', False, ''), 1)
    ext = ParamSpec('extrinsic', [0.0, 1.0], '')
    assert coerce(ext, [1, 2]) == [1.0, 2.0]
    device = ParamSpec('device', 'auto', 'where', choices=('auto', 'cpu'))
    with pytest.raises(ValueError, match="'device' must be one of 'auto', 'cpu', got 'gpu'"):
        coerce(device, 'gpu')
    assert 'One of: auto, cpu.' in device.describe()
    topics = ParamSpec('topics', [], 'optional string array')
    assert read_parameters([topics, rate], {'topics': None, 'rate': 3}.get) == \
        {'topics': None, 'rate': 3.0}
    with pytest.raises(ValueError, match='declared twice'):
        spec_table([rate, rate])


def test_every_node_speaks_one_qos_vocabulary() -> None:
    from rmseg_ros.graph import PERCEPTION_PARAMETERS
    from rmseg_ros.nodes import bag_replay_node, robotseg_node

    tables = {'perception': PERCEPTION_PARAMETERS, 'robotseg': robotseg_node.PARAMETERS,
              'bag_replay': bag_replay_node.PARAMETERS}
    for node, table in tables.items():
        specs = spec_table(table)  # no name twice
        assert specs['qos_reliability'].choices == ('best_effort', 'reliable'), node
        assert isinstance(specs['qos_depth'].default, int), node
        assert not {'qos', 'queue_depth'} & set(specs), node
    with pytest.raises(ValueError):
        qos_parameters('x', 'sensor_data', 1)


def test_make_qos_maps_the_vocabulary() -> None:
    from rclpy.qos import DurabilityPolicy, ReliabilityPolicy

    from rmseg_ros.nodes.common import make_qos

    qos = make_qos('reliable', 7)
    assert qos.reliability == ReliabilityPolicy.RELIABLE and qos.depth == 7
    assert qos.durability == DurabilityPolicy.VOLATILE
    assert make_qos('best_effort', 3).reliability == ReliabilityPolicy.BEST_EFFORT
    with pytest.raises(ValueError, match='qos_reliability'):
        make_qos('sensor_data', 1)
    with pytest.raises(ValueError, match='qos_depth'):
        make_qos('reliable', 0)


@pytest.mark.ros
def test_perception_parameters_exist_before_configure_and_are_checked(
        tiny_checkpoint, rclpy_context) -> None:
    from rclpy.parameter import Parameter

    from rmseg_ros.graph import PERCEPTION_PARAMETERS
    from rmseg_ros.nodes.perception_node import FAILURE, SUCCESS, PerceptionNode

    node = PerceptionNode(context=rclpy_context, parameter_overrides=[
        Parameter('autostart', value=False), Parameter('checkpoint', value=str(tiny_checkpoint)),
        Parameter('backend', value='tensorrt'), Parameter('sync.slop', value=0)])
    try:
        listed = set(node.list_parameters([], 10).names)
        assert {p.name for p in PERCEPTION_PARAMETERS} <= listed  # unconfigured, all there
        desc = node.describe_parameter('backend')
        assert 'torch' in desc.additional_constraints
        assert node.get_parameter('sync.slop').value == 0  # a double given as an integer
        assert node.trigger_configure() == FAILURE  # 'tensorrt' is not a backend
        node.set_parameters([Parameter('backend', value='torch')])
        assert node.trigger_configure() == SUCCESS
        assert node.sync_cfg.slop == 0.0 and isinstance(node.sync_cfg.slop, float)
    finally:
        node.destroy_node()


@pytest.mark.ros
def test_integers_are_accepted_for_doubles_and_double_arrays(rclpy_context) -> None:
    from rclpy.node import Node
    from rclpy.parameter import Parameter

    from rmseg_ros.nodes.common import declare_parameters, parameter_values

    specs = (ParamSpec('rate', 1.0, 'x'), ParamSpec('color', [255.0, 64.0, 0.0], 'y'))
    node = Node('ints', context=rclpy_context, parameter_overrides=[
        Parameter('rate', value=2), Parameter('color', value=[1, 2, 3])])
    try:
        declare_parameters(node, specs)
        assert parameter_values(node, specs) == {'rate': 2.0, 'color': [1.0, 2.0, 3.0]}
    finally:
        node.destroy_node()


def test_robotseg_config_is_built_and_checked_without_a_node() -> None:
    from rmseg_ros.nodes.robotseg_node import PARAMETERS, robotseg_config
    from rmseg_ros.params import defaults

    values = defaults(PARAMETERS)
    cfg = robotseg_config(values)
    assert cfg.overlay_color == (255, 64, 0) and cfg.qos_reliability == 'best_effort'
    assert all(spec.read_only for spec in PARAMETERS)  # read once at start
    for name, bad in (('mask_value', 0), ('overlay_color', [1.0, 2.0]), ('threshold', 1.5)):
        with pytest.raises(ValueError, match=name):
            robotseg_config({**values, name: bad})


def test_device_policy(caplog: pytest.LogCaptureFixture) -> None:
    assert resolve_device('cpu') == 'cpu'
    with pytest.raises(ValueError, match='device must be one of'):
        resolve_device('gpu')
    if torch.cuda.is_available():
        assert resolve_device('auto').startswith('cuda')
        assert resolve_backend('auto', 'auto') == 'torch'
    else:
        assert resolve_device('auto') == 'cpu'
        with caplog.at_level(logging.WARNING, logger='rmseg_ros.inference.device'):
            assert resolve_device('cuda') == 'cpu'  # a node keeps going on the CPU
        assert 'CUDA is not available' in caplog.text
        with pytest.raises(RuntimeError, match='not available'):
            resolve_device('cuda', fallback=False)  # a training run does not
        assert resolve_backend('auto', 'auto') == 'onnx'
    assert resolve_backend('auto', 'cpu') == 'onnx' and resolve_backend('torch', 'cpu') == 'torch'
    with pytest.raises(ValueError, match='backend'):
        resolve_backend('tensorrt', 'cpu')
    assert is_cuda_failure(RuntimeError('CUDA error: an illegal memory access'))
    assert is_cuda_failure(torch.cuda.OutOfMemoryError('out of memory'))
    assert not is_cuda_failure(ValueError('bad input'))
    assert not is_cuda_failure(RuntimeError('shape mismatch'))
