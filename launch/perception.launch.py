"""`ros2 launch rmseg_ros perception.launch.py [config:=FILE] [device:=cuda] [use_robotseg:=true]
[bag:=DIR] [namespace:=NS] [checkpoint:=FILE]`

The nodes and their parameters come from rmseg_ros.graph.build_graph, the same description
`rmseg-bringup` runs where launch_ros is not installed; so does the exit policy
(rmseg_ros.graph.on_node_exit): when a required node dies, the launch stops every node and
`ros2 launch` exits non-zero. `launch` and `launch_ros` are imported inside the functions that
build actions only, so the rest of this file (node_kwargs, node_environment) can be checked by
tests on machines without them.
"""

import os

from rmseg_ros.dds_transport import env_changes, transport_env
from rmseg_ros.graph import LAUNCH_ARGUMENTS, build_graph, on_node_exit


class RequiredNodeExitedError(RuntimeError):
    """Raised from the exit handler: LaunchService turns an exception into shutdown + return
    code 1, the only way a launch file can make `ros2 launch` exit non-zero."""


def node_environment(environ=None):
    """The environment every node runs in: the Fast DDS shared-memory profile
    (config/fastdds_shm.xml) unless one is already named, and never that profile together with
    FASTDDS_BUILTIN_TRANSPORTS (as `rmseg-bringup --dds-transport shm`)."""
    return transport_env(os.environ if environ is None else environ, 'shm')


def node_kwargs(**arguments):
    """launch_ros.actions.Node keyword arguments for every node of the graph."""
    added, _ = env_changes(os.environ, node_environment())
    return [dict(package=spec.package, executable=spec.executable, name=spec.name,
                 namespace=spec.namespace, parameters=[spec.parameters],
                 remappings=list(spec.remappings), output='screen', emulate_tty=True,
                 additional_env=added)
            for spec in build_graph(**arguments)]


def exit_actions(spec, returncode, shutting_down):
    """The launch entities for one node's exit (rmseg_ros.graph.on_node_exit)."""
    decision = on_node_exit(spec, returncode, shutting_down=shutting_down)
    if shutting_down:
        return []
    if decision.stop and decision.status != 0:
        raise RequiredNodeExitedError(decision.message)
    from launch.actions import LogInfo, Shutdown, TimerAction

    if not decision.stop:
        return [LogInfo(msg=f'[rmseg] {decision.message}')]
    if decision.delay_s > 0:
        return [LogInfo(msg=f'[rmseg] {decision.message}'),
                TimerAction(period=decision.delay_s,
                            actions=[Shutdown(reason=decision.message)])]
    return [Shutdown(reason=decision.message)]


def generate_launch_description():
    from launch.actions import (
        DeclareLaunchArgument,
        GroupAction,
        OpaqueFunction,
        RegisterEventHandler,
        UnsetEnvironmentVariable,
    )
    from launch.event_handlers import OnProcessExit
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node

    from launch import LaunchDescription

    def nodes(context):
        values = {name: LaunchConfiguration(name).perform(context) for name in LAUNCH_ARGUMENTS}
        specs = build_graph(**values)
        _, removed = env_changes(os.environ, node_environment())
        actions = [UnsetEnvironmentVariable(name) for name in removed]
        for spec, kwargs in zip(specs, node_kwargs(**values), strict=True):
            node = Node(**kwargs)
            actions.append(node)
            actions.append(RegisterEventHandler(OnProcessExit(
                target_action=node,
                on_exit=lambda event, ctx, spec=spec: exit_actions(
                    spec, event.returncode, ctx.is_shutdown))))
        return [GroupAction(actions, scoped=True)]  # the unset stays inside this launch file

    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=text)
         for name, (default, text) in LAUNCH_ARGUMENTS.items()]
        + [OpaqueFunction(function=nodes)])
