"""graph.py is the one description: the launch file, bringup and the node agree with it."""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from rmseg_ros import bringup
from rmseg_ros.graph import (
    LAUNCH_ARGUMENTS,
    PERCEPTION_PARAMETERS,
    build_graph,
    parameters_from_config,
    sync_config_from_parameters,
)

REPO = Path(__file__).resolve().parents[1]
LAUNCH_FILE = REPO / 'launch' / 'perception.launch.py'


def _launch_module():
    spec = importlib.util.spec_from_file_location('perception_launch', LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # launch/launch_ros are imported lazily: not needed here
    return module


@pytest.mark.parametrize('args', [
    {},
    {'use_robotseg': 'true', 'namespace': 'robot1', 'device': 'cpu'},
    {'bag': 'data/demo', 'checkpoint': 'x.safetensors'},
])
def test_launch_file_and_bringup_describe_the_same_nodes(args):
    launch_nodes = _launch_module().node_kwargs(**args)
    ns = bringup.build_parser().parse_args(
        [f'--{k.replace("_", "-")}' + ('' if k == 'use_robotseg' else f'={v}')
         for k, v in args.items()])
    bringup_nodes = bringup.graph_from_args(ns)
    assert [n['name'] for n in launch_nodes] == [n.name for n in bringup_nodes]
    for kw, spec in zip(launch_nodes, bringup_nodes, strict=True):
        assert kw['package'] == spec.package == 'rmseg_ros'
        assert kw['executable'] == spec.executable
        assert kw['namespace'] == spec.namespace == args.get('namespace', '')
        assert kw['parameters'] == [spec.parameters]
        assert kw['remappings'] == spec.remappings
    names = [n.name for n in bringup_nodes]
    assert ('robotseg' in names) == ('use_robotseg' in args)
    assert ('bag_replay' in names) == ('bag' in args)


def test_launch_and_bringup_give_nodes_the_same_dds_profile(monkeypatch):
    from rmseg_ros.dds_transport import PROFILE_VAR, transport_env

    monkeypatch.delenv(PROFILE_VAR, raising=False)
    env = _launch_module().node_kwargs()[0]['additional_env']
    assert env[PROFILE_VAR] == transport_env({}, 'shm')[PROFILE_VAR]
    assert Path(env[PROFILE_VAR]).is_file()
    assert bringup.build_parser().parse_args([]).dds_transport == 'shm'
    monkeypatch.setenv(PROFILE_VAR, '/etc/robot/dds.xml')  # the user's own profile is kept
    assert _launch_module().node_kwargs()[0]['additional_env'] == {}


def test_bringup_print_names_the_dds_environment_the_nodes_get(monkeypatch, capsys):
    from rmseg_ros.dds_transport import BUILTIN_VAR, PROFILE_VAR

    monkeypatch.delenv(PROFILE_VAR, raising=False)
    monkeypatch.setenv(BUILTIN_VAR, 'LARGE_DATA')
    assert bringup.main(['--print']) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert list(shown['environment']) == [PROFILE_VAR]  # the built-in set is dropped for it
    assert Path(shown['environment'][PROFILE_VAR]).name == 'fastdds_shm.xml'
    assert [n['name'] for n in shown['nodes']] == ['perception']
    assert bringup.main(['--print', '--dds-transport', 'UDPv4']) == 0
    assert yaml.safe_load(capsys.readouterr().out)['environment'] == {BUILTIN_VAR: 'UDPv4'}


def test_launch_file_is_launch_ros_code_with_every_argument():
    tree = ast.parse(LAUNCH_FILE.read_text())
    imports = {(n.module, a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
               for a in n.names}
    assert ('launch_ros.actions', 'Node') in imports
    assert ('launch.actions', 'DeclareLaunchArgument') in imports
    assert ('launch.actions', 'UnsetEnvironmentVariable') in imports
    assert ('launch.event_handlers', 'OnProcessExit') in imports
    funcs = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert 'generate_launch_description' in funcs
    assert set(LAUNCH_ARGUMENTS) == {'config', 'device', 'use_robotseg', 'bag', 'namespace',
                                     'checkpoint'}


def test_bringup_params_file_and_command(tmp_path):
    spec = build_graph(device='cpu')[-1]
    cmd = bringup.command(spec, tmp_path)
    assert cmd[1:3] == ['-m', 'rmseg_ros.nodes.perception_node']
    params = yaml.safe_load(Path(cmd[cmd.index('--params-file') + 1]).read_text())
    assert params['/**']['ros__parameters']['device'] == 'cpu'
    assert params['/**']['ros__parameters']['sync.slop'] == 0.05


def test_config_maps_onto_declared_parameters():
    declared = {p.name: p for p in PERCEPTION_PARAMETERS}
    assert all(p.description for p in PERCEPTION_PARAMETERS)
    params = parameters_from_config(yaml.safe_load(
        (REPO / 'config' / 'perception.yaml').read_text()))
    assert set(params) <= set(declared)
    for name, value in params.items():  # each value has the declared parameter's type
        assert type(value) is type(declared[name].default), name
    sync = sync_config_from_parameters({**{p.name: p.default for p in PERCEPTION_PARAMETERS},
                                        **params})
    assert sync.required == ('rgb',) and sync.pivot_fallback == ('depth', 'lidar', 'event')
    with pytest.raises(ValueError, match='unknown perception parameters'):
        parameters_from_config({'sync': {'slopp': 0.1}})
    with pytest.raises(ValueError, match='unknown section'):
        parameters_from_config({'synk': {}})


def test_perception_mapping_sets_only_the_parameters_it_names():
    """The documented rule of config/perception.yaml: each leaf is one parameter, so a partial
    `timeouts` mapping leaves the other modalities at the node's defaults."""
    params = parameters_from_config({'sync': {'timeouts': {'rgb': 1.0}}})
    assert params == {'sync.timeouts.rgb': 1.0}
    p = {**{q.name: q.default for q in PERCEPTION_PARAMETERS}, **params}
    assert sync_config_from_parameters(p).timeouts == {'rgb': 1.0, 'depth': 0.5, 'lidar': 0.5,
                                                       'event': 0.5}


def test_default_extrinsic_is_the_standard_lidar_to_optical_rotation():
    from rmseg_ros.nodes.perception_node import extrinsic_matrix
    from rmseg_ros.synthetic import T_CAM_LIDAR_DEFAULT

    default = next(p.default for p in PERCEPTION_PARAMETERS if p.name == 'lidar_extrinsic')
    assert np.allclose(extrinsic_matrix(default), T_CAM_LIDAR_DEFAULT, atol=1e-9)
    assert np.allclose(extrinsic_matrix(T_CAM_LIDAR_DEFAULT.reshape(-1)), T_CAM_LIDAR_DEFAULT)
    with pytest.raises(ValueError):
        extrinsic_matrix([0.0] * 7)


def test_node_help_lists_parameters_without_starting_ros():
    out = subprocess.run([sys.executable, '-m', 'rmseg_ros.nodes.perception_node', '--help'],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0
    assert 'sync.timeouts.lidar' in out.stdout and 'lidar_extrinsic' in out.stdout


# ---------------------------------------------------------------------------- issue 20 defects

def _config_with(tmp_path, **node):
    data = yaml.safe_load((REPO / 'config' / 'perception.yaml').read_text())
    data['node'].update(node)
    path = tmp_path / 'perception.yaml'
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _perception_params(nodes):
    return next(n for n in nodes if n.name == 'perception').parameters


def test_device_in_the_config_file_holds_unless_the_argument_is_given(tmp_path):
    config = _config_with(tmp_path, device='cpu')
    # launch passes every argument, with its default where the user gave none
    defaults = {name: default for name, (default, _) in LAUNCH_ARGUMENTS.items()}
    launched = _launch_module().node_kwargs(**{**defaults, 'config': config})
    assert launched[-1]['parameters'][0]['device'] == 'cpu'
    ns = bringup.build_parser().parse_args(['--config', config])
    assert _perception_params(bringup.graph_from_args(ns))['device'] == 'cpu'
    over = _launch_module().node_kwargs(**{**defaults, 'config': config, 'device': 'cuda'})
    assert over[-1]['parameters'][0]['device'] == 'cuda'
    robotseg = build_graph(config=config, use_robotseg='true')
    assert robotseg[0].name == 'robotseg' and robotseg[0].parameters['device'] == 'cpu'


def test_exit_policy_stops_the_graph_when_a_required_node_dies():
    from rmseg_ros.graph import exit_status, on_node_exit

    replay, robotseg, perception = build_graph(bag='data/demo', use_robotseg='true')
    assert (replay.name, robotseg.name, perception.name) == ('bag_replay', 'robotseg',
                                                             'perception')
    assert perception.required and robotseg.required and replay.finishes
    failed = on_node_exit(perception, 2)
    assert failed.stop and failed.status == 2 and failed.delay_s == 0
    assert 'perception' in failed.message
    killed = on_node_exit(robotseg, -9)  # SIGKILL, as a shell reports it
    assert killed.stop and killed.status == exit_status(-9) == 137
    bad_bag = on_node_exit(replay, 2)
    assert bad_bag.stop and bad_bag.status == 2
    played = on_node_exit(replay, 0, linger_s=1.5)
    assert played.stop and played.status == 0 and played.delay_s == 1.5
    # exits while the graph is stopping (SIGINT from the launcher) are expected
    assert not on_node_exit(perception, -2, shutting_down=True).stop


def test_launch_exit_handler_fails_the_launch_for_a_dead_required_node():
    launch_module = _launch_module()
    perception = build_graph()[-1]
    with pytest.raises(launch_module.RequiredNodeExitedError, match=r'perception.*status 2'):
        launch_module.exit_actions(perception, 2, False)
    assert launch_module.exit_actions(perception, -2, True) == []


def test_launch_nodes_never_get_the_builtin_transports_and_the_profile_together(monkeypatch):
    from rmseg_ros.dds_transport import BUILTIN_VAR, PROFILE_VAR, env_changes

    monkeypatch.delenv(PROFILE_VAR, raising=False)
    monkeypatch.setenv(BUILTIN_VAR, 'LARGE_DATA')
    module = _launch_module()
    env = module.node_environment()
    assert Path(env[PROFILE_VAR]).name == 'fastdds_shm.xml' and BUILTIN_VAR not in env
    added, removed = env_changes(os.environ, env)
    assert removed == [BUILTIN_VAR]  # the launch file unsets it for its nodes
    assert module.node_kwargs()[0]['additional_env'] == added
    effective = {k: v for k, v in os.environ.items() if k not in removed} | added
    assert effective == env
    monkeypatch.setenv(PROFILE_VAR, '/etc/robot/dds.xml')  # the user's profile and choice stay
    assert env_changes(os.environ, module.node_environment()) == ({}, [])


def test_package_xml_declares_launch_and_launch_ros():
    import xml.etree.ElementTree as ET

    exec_deps = {e.text for e in ET.parse(REPO / 'package.xml').getroot().findall('exec_depend')}
    assert {'launch', 'launch_ros'} <= exec_deps


def _launch_available() -> bool:
    try:
        from ament_index_python.packages import get_package_prefix

        get_package_prefix('rmseg_ros')  # the Node actions run installed executables
    except Exception:
        return False
    return all(importlib.util.find_spec(m) is not None
               for m in ('launch.launch_service', 'launch_ros.actions'))


@pytest.mark.ros
@pytest.mark.skipif(not _launch_available(),
                    reason='launch / launch_ros or an installed rmseg_ros are not available')
def test_launch_service_exits_nonzero_when_perception_cannot_start(ros_domain, tmp_path):
    from launch.actions import IncludeLaunchDescription
    from launch.launch_description_sources import PythonLaunchDescriptionSource

    from launch import LaunchDescription, LaunchService

    service = LaunchService()
    service.include_launch_description(LaunchDescription([IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(LAUNCH_FILE)),
        launch_arguments={'checkpoint': str(tmp_path / 'missing.safetensors'),
                          'device': 'cpu'}.items())]))
    assert service.run() != 0


def test_graph_stays_light_for_the_launch_process():
    """`ros2 launch` imports rmseg_ros.graph in its own process: no OpenCV, torch, rclpy or front
    end (the settings dataclasses live in rmseg_ros.pipeline.config)."""
    code = ('import sys, rmseg_ros.graph; print(sorted(m for m in ("cv2", "torch", "rclpy", '
            '"rmseg_ros.frontend.preprocess", "rmseg_ros.pipeline.perception", '
            '"rmseg_ros.inference.segmenter", "rmseg_ros.conversions") if m in sys.modules))')
    done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=120, check=True)
    assert done.stdout.strip() == '[]', done.stdout
