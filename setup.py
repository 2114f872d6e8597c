"""ament_python build of rmseg_ros: the package, the training pipelines, launch and config files."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = 'rmseg_ros'

setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(include=['rmseg_ros', 'rmseg_ros.*', 'training', 'training.*']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + PACKAGE]),
        ('share/' + PACKAGE, ['package.xml']),
        ('share/' + PACKAGE + '/launch', glob('launch/*.py')),
        ('share/' + PACKAGE + '/config', glob('config/*.yaml') + glob('config/*.rviz')
                                        + glob('config/*.xml')),
        ('share/' + PACKAGE + '/weights', glob('weights/*.safetensors')),
    ],
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='rmseg_ros maintainers',
    maintainer_email='maintainers@rmseg-ros.invalid',
    description='Robust multi-modal semantic segmentation for ROS 2',
    license='Apache-2.0',
    extras_require={'test': ['pytest', 'hypothesis']},
    entry_points={
        'console_scripts': [
            'bag_replay_node = rmseg_ros.nodes.bag_replay_node:main',
            'perception_node = rmseg_ros.nodes.perception_node:main',
            'synthetic_sensors = rmseg_ros.nodes.synthetic_sensors:main',
            'robotseg_node = rmseg_ros.nodes.robotseg_node:main',
            'rmseg-bringup = rmseg_ros.bringup:main',
            'rmseg-train = training.cli:main',
        ],
    },
)
