"""rosbag2 writing with standard message types only (rosbags; no rclpy).

Images and point clouds are built by rmseg_ros.conversions with a rosbags typestore as the
message family, so bags use exactly the layouts the nodes read. Events are a PointCloud2 with
fields x (uint16), y (uint16), p (int8, +1 ON / -1 OFF) and t (float64 seconds on the bag clock,
i.e. the same epoch as header stamps); PointField has no 64-bit integer type. /tf_static is
written with transient-local durability so that a replay latches it, as a live tf_static does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from rosbags.rosbag2 import CompressionFormat, CompressionMode, StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from rmseg_ros import conversions
from rmseg_ros.bag_qos import LATCHED_QOS
from rmseg_ros.camera import CameraIntrinsics
from training.sim.geometry import quaternion_from_matrix

TYPESTORE = get_typestore(Stores.ROS2_KILTED)

EVENT_DTYPE = np.dtype({'names': ['x', 'y', 'p', 't'],
                        'formats': ['<u2', '<u2', 'i1', '<f8'],
                        'offsets': [0, 2, 4, 8], 'itemsize': 16})
LIDAR_DTYPE = np.dtype([('x', '<f4'), ('y', '<f4'), ('z', '<f4'), ('intensity', '<f4')])



def _t(name: str) -> Any:
    return TYPESTORE.types[name]


def header(stamp_ns: int, frame_id: str) -> Any:
    sec, nsec = divmod(int(stamp_ns), 1_000_000_000)
    return _t('std_msgs/msg/Header')(stamp=_t('builtin_interfaces/msg/Time')(sec=sec,
                                                                              nanosec=nsec),
                                     frame_id=frame_id)


def image_msg(array: np.ndarray, encoding: str, stamp_ns: int, frame_id: str) -> Any:
    return conversions.numpy_to_image(array, encoding, header(stamp_ns, frame_id),
                                      msg_cls=TYPESTORE)


def camera_info_msg(intr: CameraIntrinsics, stamp_ns: int, frame_id: str) -> Any:
    P = intr.P if intr.P is not None else np.hstack([intr.K, np.zeros((3, 1))])
    d = np.zeros(5) if intr.D.size == 0 else intr.D
    return _t('sensor_msgs/msg/CameraInfo')(
        header=header(stamp_ns, frame_id), height=intr.height, width=intr.width,
        distortion_model=intr.distortion_model or 'plumb_bob',
        d=np.asarray(d, np.float64), k=np.asarray(intr.K, np.float64).reshape(9),
        r=np.asarray(intr.R, np.float64).reshape(9), p=np.asarray(P, np.float64).reshape(12),
        binning_x=0, binning_y=0,
        roi=_t('sensor_msgs/msg/RegionOfInterest')(x_offset=0, y_offset=0, height=0, width=0,
                                                   do_rectify=False))


def lidar_msg(xyz: np.ndarray, intensity: np.ndarray, stamp_ns: int, frame_id: str) -> Any:
    """Organised (beams x columns) cloud; NaN points mean no return (is_dense = False)."""
    cloud = np.empty(xyz.shape[:-1], dtype=LIDAR_DTYPE)
    cloud['x'], cloud['y'], cloud['z'] = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    cloud['intensity'] = intensity
    return conversions.array_to_pointcloud2(cloud, header(stamp_ns, frame_id), msg_cls=TYPESTORE)


def events_array(x: np.ndarray, y: np.ndarray, t_ns: np.ndarray, p: np.ndarray) -> np.ndarray:
    cloud = np.zeros(np.asarray(x).size, dtype=EVENT_DTYPE)  # zeroed padding: reproducible bytes
    cloud['x'], cloud['y'], cloud['p'] = x, y, p
    cloud['t'] = np.asarray(t_ns, dtype=np.int64) * 1e-9
    return cloud


def events_msg(cloud: np.ndarray, stamp_ns: int, frame_id: str) -> Any:
    return conversions.array_to_pointcloud2(cloud, header(stamp_ns, frame_id), msg_cls=TYPESTORE,
                                            is_dense=True)


def joint_state_msg(names: list[str], position: np.ndarray, velocity: np.ndarray,
                    stamp_ns: int) -> Any:
    return _t('sensor_msgs/msg/JointState')(
        header=header(stamp_ns, ''), name=list(names),
        position=np.asarray(position, np.float64), velocity=np.asarray(velocity, np.float64),
        effort=np.zeros(0, np.float64))


def tf_msg(transforms: list[tuple[str, str, np.ndarray]], stamp_ns: int) -> Any:
    """TFMessage of (parent, child, T_parent_child) triples."""
    out = []
    for parent, child, T in transforms:
        q = quaternion_from_matrix(T[:3, :3])
        tr = T[:3, 3]
        out.append(_t('geometry_msgs/msg/TransformStamped')(
            header=header(stamp_ns, parent), child_frame_id=child,
            transform=_t('geometry_msgs/msg/Transform')(
                translation=_t('geometry_msgs/msg/Vector3')(x=float(tr[0]), y=float(tr[1]),
                                                            z=float(tr[2])),
                rotation=_t('geometry_msgs/msg/Quaternion')(x=float(q[0]), y=float(q[1]),
                                                            z=float(q[2]), w=float(q[3])))))
    return _t('tf2_msgs/msg/TFMessage')(transforms=out)


class BagWriter:
    """A rosbag2 directory being written; topics are added on first use."""

    def __init__(self, path: str | Path, storage: str = 'mcap', compression: str = 'none') -> None:
        plugins = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}
        if storage not in plugins:
            raise ValueError(f'storage must be one of {sorted(plugins)}, got {storage!r}')
        if compression not in ('none', 'zstd'):
            raise ValueError(f"compression must be 'none' or 'zstd', got {compression!r}")
        self._writer = Writer(Path(path), version=9, storage_plugin=plugins[storage])
        if compression == 'zstd':
            # mcap: zstd chunks (transparent to every mcap reader); sqlite3: per message.
            mode = CompressionMode.STORAGE if storage == 'mcap' else CompressionMode.MESSAGE
            self._writer.set_compression(mode, CompressionFormat.ZSTD)
        self._writer.open()
        self._connections: dict[str, Any] = {}
        self.counts: dict[str, int] = {}

    def write(self, topic: str, stamp_ns: int, msg: Any, latched: bool = False) -> None:
        self.write_raw(topic, stamp_ns, TYPESTORE.serialize_cdr(msg, msg.__msgtype__),
                       msg.__msgtype__, latched)

    def write_raw(self, topic: str, stamp_ns: int, data: bytes, msgtype: str | None = None,
                  latched: bool = False) -> None:
        """Serialized bytes as they are (tests use it to store corrupt records); `msgtype` is
        needed only for the first record of a topic."""
        conn = self._connections.get(topic)
        if conn is None:
            if msgtype is None:
                raise ValueError(f'first record of {topic!r} needs its msgtype')
            qos = [LATCHED_QOS] if latched else []
            conn = self._writer.add_connection(topic, msgtype, typestore=TYPESTORE,
                                               offered_qos_profiles=qos)
            self._connections[topic] = conn
            self.counts[topic] = 0
        self._writer.write(conn, int(stamp_ns), data)
        self.counts[topic] += 1

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> BagWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
