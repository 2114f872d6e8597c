"""A rosbag2 recording -> synchronised, preprocessed training samples.

The same synchroniser (`rmseg_ros.sync.core`) and preprocessing (`rmseg_ros.frontend.preprocess`) as
the perception node, so what is trained is what runs; event_camera_msgs/EventPacket (evt3) records
are decoded in stream order per topic as the node does (`rmseg_ros.frontend.evt3`). Two passes over
the bag: the first collects the small static things (CameraInfo, /tf_static) and the label images by
stamp; the second streams the sensor topics through the synchroniser. Unlabelled frames are kept and
flagged. mcap storage is read with `rmseg_ros.bag_recovery`: a truncated or damaged recording gives
the samples of its intact chunks, and what was lost is counted in `BagStats`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from rosbags.highlevel import AnyReader

from rmseg_ros import conversions
from rmseg_ros.bag_recovery import damage_of, open_any_reader
from rmseg_ros.camera import CameraIntrinsics
from rmseg_ros.config import config_path, from_dict, load_yaml
from rmseg_ros.frontend.evt3 import Evt3Decoder, decode_packet
from rmseg_ros.frontend.preprocess import (
    FrontendConfig,
    ModelInput,
    build_model_input,
    frame_from_messages,
)
from rmseg_ros.frontend.sensor_geometry import SensorGeometry
from rmseg_ros.modalities import MODALITIES
from rmseg_ros.sync.core import ModalitySynchronizer, SyncConfig
from rmseg_ros.transforms import TransformTree
from training.topics import Topics

log = logging.getLogger(__name__)
# Event cameras' driver message. rosbags' AnyReader registers the definition stored in the bag
# (mcap schema / rosbag2 message_definitions), so it reads without event_camera_msgs installed.
EVENT_PACKET = 'event_camera_msgs/msg/EventPacket'


@dataclass
class DatasetConfig:
    topics: Topics = field(default_factory=Topics)
    camera_frame: str | None = None
    lidar_frame: str | None = None
    extrinsic: list | None = None
    label_png_dir: str | None = None
    frontend_config: str = 'perception.yaml'
    sync: SyncConfig = field(default_factory=SyncConfig)

    @classmethod
    def load(cls, path: str | Path | None = None) -> DatasetConfig:
        default = Path(__file__).resolve().parents[1] / 'configs' / 'dataset.yaml'
        return from_dict(cls, load_yaml(path or default), 'dataset')

    def frontend(self) -> FrontendConfig:
        path = Path(self.frontend_config)
        if not path.is_absolute() and not path.exists():
            path = config_path(self.frontend_config)
        return from_dict(FrontendConfig, load_yaml(path).get('frontend', {}), 'frontend')


@dataclass
class Sample:
    model_input: ModelInput
    labels: np.ndarray  # (H, W) uint8, 255 where unlabelled
    robot: np.ndarray  # (H, W) uint8 0/1, 255 where unknown
    labelled: bool


@dataclass
class BagStats:
    messages: Counter = field(default_factory=Counter)
    corrupt: int = 0
    malformed: int = 0
    samples: int = 0
    unlabelled: int = 0
    # mcap chunks skipped or read in part, messages known lost, bytes passed over, file cut short
    damaged_chunks: int = 0
    damaged_records: int = 0
    damaged_bytes: int = 0
    truncated: bool = False

    def set_damage(self, reader: AnyReader) -> None:
        d = damage_of(reader)
        self.damaged_chunks = d.chunks_skipped + d.chunks_partial
        self.damaged_records = d.records_skipped
        self.damaged_bytes = d.bytes_skipped
        self.truncated = d.truncated


def _norm(topic: str) -> str:
    return topic.lstrip('/')


def _resize_labels(labels: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    if labels.shape[:2] == hw:
        return np.ascontiguousarray(labels)
    return cv2.resize(labels, (hw[1], hw[0]), interpolation=cv2.INTER_NEAREST)


class BagSampleReader:
    """Iterate synchronised samples of one bag; counts what was skipped and why."""

    def __init__(self, bag: str | Path, config: DatasetConfig, frontend: FrontendConfig) -> None:
        self.bag = Path(bag)
        self.config = config
        self.frontend = frontend
        self.stats = BagStats()
        self.camera: CameraIntrinsics | None = None
        self.camera_frame: str | None = config.camera_frame
        self.T_cam_lidar: np.ndarray | None = (
            np.asarray(config.extrinsic, dtype=np.float64).reshape(4, 4)
            if config.extrinsic is not None else None)
        self._labels: dict[int, np.ndarray] = {}
        self._robot: dict[int, np.ndarray] = {}

    def _deserialize(self, reader: AnyReader, conn, raw: bytes):
        try:
            return reader.deserialize(raw, conn.msgtype)
        except Exception as exc:  # rosbags raises several types for corrupt CDR
            self.stats.corrupt += 1
            log.warning('%s: skipping corrupt record on %s: %s', self.bag, conn.topic, exc)
            return None

    def _first_pass(self, reader: AnyReader) -> None:
        t = self.config.topics
        wanted = {_norm(x) for x in (t.camera_info, t.tf_static, t.semantic, t.robot)}
        conns = [c for c in reader.connections if _norm(c.topic) in wanted]
        tree = TransformTree()
        for conn, _, raw in reader.messages(connections=conns):
            msg = self._deserialize(reader, conn, raw)
            if msg is None:
                continue
            topic = _norm(conn.topic)
            try:
                if topic == _norm(t.camera_info) and self.camera is None:
                    self.camera = conversions.camera_info_to_intrinsics(msg)
                    self.camera_frame = self.camera_frame or msg.header.frame_id
                elif topic == _norm(t.tf_static):
                    tree.add_message(msg)
                elif topic in (_norm(t.semantic), _norm(t.robot)):
                    stamp = conversions.stamp_ns(msg)
                    image = conversions.image_to_numpy(msg)
                    target = self._labels if topic == _norm(t.semantic) else self._robot
                    target[stamp] = _resize_labels(image, self.frontend.hw)
            except Exception as exc:  # a damaged record that still deserialised
                self.stats.malformed += 1
                log.warning('%s: skipping malformed %s record: %s', self.bag, conn.topic, exc)
        if self.camera is None:
            raise ValueError(f'{self.bag}: no CameraInfo on {t.camera_info!r}; every model '
                             'input is aligned to the camera, so the bag needs one')
        self._tree = tree
        self._load_png_labels()

    def _load_png_labels(self) -> None:
        if not self.config.label_png_dir:
            return
        root = self.bag / self.config.label_png_dir
        for kind, target in (('semantic', self._labels), ('robot', self._robot)):
            for png in sorted((root / kind).glob('*.png')):
                image = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
                if image is None or image.ndim != 2:
                    log.warning('%s: not a single-channel label PNG, skipped', png)
                    continue
                target[int(png.stem)] = _resize_labels(image, self.frontend.hw)

    def _extrinsic(self, lidar_frame: str) -> np.ndarray:
        if self.T_cam_lidar is None:
            frame = self.config.lidar_frame or lidar_frame
            try:
                self.T_cam_lidar = self._tree.lookup(self.camera_frame, frame)
            except LookupError as exc:
                raise ValueError(f'{self.bag}: no camera <- LiDAR extrinsic ({exc}); set '
                                 '`extrinsic` in the dataset config') from exc
        return self.T_cam_lidar

    def _sample(self, synced) -> Sample | None:
        messages = synced.messages
        T = None
        if 'lidar' in messages:
            T = self._extrinsic(messages['lidar'].header.frame_id)
        try:
            frame = frame_from_messages(synced.stamp_ns, messages, SensorGeometry(self.camera, T))
            model_input = build_model_input(frame, self.frontend)
        except Exception as exc:  # damaged bytes can fail in any way: one sample, not the bag
            self.stats.malformed += 1
            log.warning('%s: skipping sample at %d: %s', self.bag, synced.stamp_ns, exc)
            return None
        if not model_input.presence.any():
            return None
        hw = self.frontend.hw
        labels = self._labels.get(synced.stamp_ns)
        robot = self._robot.get(synced.stamp_ns)
        labelled = labels is not None
        if not labelled:
            self.stats.unlabelled += 1
        return Sample(
            model_input,
            labels if labelled else np.full(hw, 255, np.uint8),
            robot if robot is not None else np.full(hw, 255, np.uint8),
            labelled,
        )

    def __iter__(self) -> Iterator[Sample]:
        t = self.config.topics
        topic_of = {_norm(getattr(t, m)): m for m in MODALITIES}
        with open_any_reader(self.bag) as reader:
            self._first_pass(reader)
            sync = ModalitySynchronizer(self.config.sync)
            conns = [c for c in reader.connections if _norm(c.topic) in topic_of]
            evt3: dict[str, Evt3Decoder] = {}  # per topic: the stream state spans packets
            for conn, _, raw in reader.messages(connections=conns):
                msg = self._deserialize(reader, conn, raw)
                if msg is None:
                    continue
                modality = topic_of[_norm(conn.topic)]
                self.stats.messages[modality] += 1
                stamp = conversions.stamp_ns(msg)
                if conn.msgtype == EVENT_PACKET:
                    try:
                        msg = decode_packet(msg, evt3.setdefault(conn.topic, Evt3Decoder()),
                                            stamp)
                    except ValueError as exc:
                        self.stats.malformed += 1
                        log.warning('%s: skipping event packet at %d: %s', self.bag, stamp, exc)
                        continue
                for synced in sync.add(modality, stamp, msg):
                    sample = self._sample(synced)
                    if sample is not None:
                        self.stats.samples += 1
                        yield sample
            self.stats.set_damage(reader)  # before close: the storages are dropped then
