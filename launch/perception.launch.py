"""`ros2 launch rmseg_ros perception.launch.py [config:=FILE] [device:=cuda] [use_robotseg:=true]
[bag:=DIR] [namespace:=NS] [checkpoint:=FILE]`

The nodes and their parameters come from rmseg_ros.graph.build_graph, the same description
`rmseg-bringup` runs where launch_ros is not installed. `launch` and `launch_ros` are imported
inside generate_launch_description only, so the rest of this file (node_kwargs) can be checked
by tests on machines without them.
"""

import os

from rmseg_ros.dds_transport import transport_env
from rmseg_ros.graph import LAUNCH_ARGUMENTS, build_graph


def node_kwargs(**arguments):
    """launch_ros.actions.Node keyword arguments for every node of the graph.

    Each node gets the Fast DDS shared-memory profile (config/fastdds_shm.xml) unless the
    environment already names a profile file, as `rmseg-bringup --dds-transport shm` does.
    """
    env = {k: v for k, v in transport_env(os.environ, 'shm').items()
           if os.environ.get(k) != v}
    return [dict(package=spec.package, executable=spec.executable, name=spec.name,
                 namespace=spec.namespace, parameters=[spec.parameters],
                 remappings=list(spec.remappings), output='screen', emulate_tty=True,
                 additional_env=env)
            for spec in build_graph(**arguments)]


def generate_launch_description():
    from launch.actions import DeclareLaunchArgument, OpaqueFunction
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node

    from launch import LaunchDescription

    def nodes(context):
        values = {name: LaunchConfiguration(name).perform(context) for name in LAUNCH_ARGUMENTS}
        return [Node(**kwargs) for kwargs in node_kwargs(**values)]

    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=text)
         for name, (default, text) in LAUNCH_ARGUMENTS.items()]
        + [OpaqueFunction(function=nodes)])
