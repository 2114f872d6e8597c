"""Seeded fuzz of the ROS-free per-message path (issue 21): malformed Image, PointCloud2 (LiDAR
and events) and CameraInfo messages, mixed into an otherwise valid set, go through exactly the
functions the perception node's callbacks and worker call (CameraInfoGate.update,
PreparedInputCache.put, frame_from_messages + build_model_input, PerceptionPipeline.run).
Nothing may escape, and every message is accounted for exactly once: used, degraded or rejected
with a reason. `make test` runs a few hundred per input; `make test-slow` >= 10,000 per input."""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
from rig_messages import set_messages
from sensor_msgs.msg import CameraInfo, PointField

from rmseg_ros.camera import SizeLimits
from rmseg_ros.classes import ClassTable
from rmseg_ros.conversions import CameraInfoGate
from rmseg_ros.frontend.prepared import PreparedInputCache
from rmseg_ros.frontend.preprocess import FrontendConfig, build_model_input, frame_from_messages
from rmseg_ros.frontend.sensor_geometry import SensorGeometry
from rmseg_ros.inference.segmenter import Segmenter
from rmseg_ros.pipeline.config import PerceptionConfig
from rmseg_ros.pipeline.perception import PerceptionPipeline
from rmseg_ros.sync.core import SyncedSet
from rmseg_ros.synthetic import T_CAM_LIDAR_DEFAULT, SyntheticRig

RIG = SyntheticRig(width=64, height=48, lidar_columns=64)
GEOM = SensorGeometry(RIG.camera, T_CAM_LIDAR_DEFAULT)
STAMP = 1_700_000_000_000_000_000
CFG = FrontendConfig(height=24, width=32)
U32 = 2**32 - 1
WILD_FLOATS = (float('nan'), float('inf'), -float('inf'), 0.0, -1.0, 1e300, 9.3e9, -9.3e9)
ENCODINGS = ('rgb8', 'bgr8', 'mono8', 'rgba8', 'bayer_rggb8', 'bayer_grbg16', '32FC1', '16UC1',
             'mono16', '64FC3', '8UC4', 'yuv422', 'jpeg', '', 'rgb8 ', '32FC0', '8UC999')


def _int(rng: random.Random, hi: int = U32) -> int:
    return rng.choice([0, 1, 2, 3, 7, 64, 48, 1000, 65535, hi, rng.randrange(hi + 1)])


def _bytes(rng: random.Random, data: bytes) -> bytes:
    choice = rng.randrange(4)
    if choice == 0:
        return data[:rng.randrange(len(data) + 1)]
    if choice == 1:
        return bytes(rng.getrandbits(8) for _ in range(rng.randrange(64)))
    if choice == 2 and data:
        arr = bytearray(data)
        for _ in range(rng.randrange(1, 32)):
            arr[rng.randrange(len(arr))] = rng.getrandbits(8)
        return bytes(arr)
    return data


def _int_field(rng: random.Random, msg, what: int, names: tuple[str, ...]) -> bool:
    """Cases 0..len(names)-1 of a mutator: that integer field gets a wild value."""
    if what >= len(names):
        return False
    setattr(msg, names[what], _int(rng))
    return True


def _image(rng: random.Random, msg):
    msg = copy.deepcopy(msg)
    for _ in range(rng.randrange(1, 4)):
        what = rng.randrange(6)
        if _int_field(rng, msg, what, ('width', 'height', 'step')):
            continue
        if what == 3:
            msg.encoding = rng.choice(ENCODINGS)
        elif what == 4:
            msg.is_bigendian = rng.randrange(2)
        else:
            msg.data = _bytes(rng, bytes(msg.data))
    return msg


def _cloud(rng: random.Random, msg, event: bool):
    msg = copy.deepcopy(msg)
    for _ in range(rng.randrange(1, 4)):
        what = rng.randrange(7)
        if _int_field(rng, msg, what, ('width', 'height', 'point_step', 'row_step')):
            continue
        if what == 4 and msg.fields:
            f = rng.choice(msg.fields)
            field = rng.randrange(4)
            if field == 0:
                f.name = rng.choice(['x', 'y', 'z', 't', 'p', 'intensity', '', 'q'])
            elif field == 1:
                f.offset = _int(rng)
            elif field == 2:
                f.datatype = rng.randrange(256)
            else:
                f.count = _int(rng)
        elif what == 5:
            if rng.random() < 0.5 and msg.fields:
                msg.fields = msg.fields[:-1]
            else:
                msg.fields = [*msg.fields, PointField(name='t', offset=0, datatype=8, count=1)]
        else:
            data = bytearray(msg.data)
            if event and msg.point_step == 13 and len(data) >= 13 and rng.random() < 0.6:
                # a wild event time in place: the OverflowError of issue 21 item 1
                k = rng.randrange(len(data) // 13)
                t = np.array([rng.choice(WILD_FLOATS)], '<f8').tobytes()
                data[k * 13 + 4:k * 13 + 12] = t
                msg.data = bytes(data)
            else:
                msg.data = _bytes(rng, bytes(data))
    return msg


def _camera_info(rng: random.Random, msg):
    msg = copy.deepcopy(msg)
    for _ in range(rng.randrange(1, 4)):
        what = rng.randrange(7)
        if _int_field(rng, msg, what, ('width', 'height')):
            continue
        if what == 2:
            k = list(msg.k)
            k[rng.randrange(9)] = rng.choice(WILD_FLOATS)
            msg.k = k
        elif what == 3:
            msg.d = [rng.choice((*WILD_FLOATS, 0.01)) for _ in range(
                rng.choice([0, 3, 4, 5, 8, 15, 10000]))]
        elif what == 4:
            r = list(msg.r)
            r[rng.randrange(9)] = rng.choice(WILD_FLOATS)
            msg.r = r
        elif what == 5:
            p = list(msg.p)
            p[rng.randrange(12)] = rng.choice(WILD_FLOATS)
            msg.p = p
        else:
            msg.distortion_model = rng.choice(['', 'none', 'plumb_bob', 'rational_polynomial',
                                               'equidistant', 'mystery'])
    return msg


def _valid_camera_info() -> CameraInfo:
    cam = RIG.camera
    msg = CameraInfo(width=cam.width, height=cam.height, distortion_model='plumb_bob')
    msg.k = cam.K.reshape(-1).tolist()
    msg.d = [0.0] * 5
    msg.r = np.eye(3).reshape(-1).tolist()
    msg.p = np.hstack([cam.K, np.zeros((3, 1))]).reshape(-1).tolist()
    return msg


@pytest.fixture(scope='module')
def pipeline(tiny_checkpoint) -> PerceptionPipeline:
    seg = Segmenter.from_checkpoint(tiny_checkpoint, device='cpu', backend='torch')
    return PerceptionPipeline(seg, ClassTable.load(), PerceptionConfig())


def _fuzz_camera_info(n: int, seed: int) -> None:
    rng = random.Random(seed)
    gate = CameraInfoGate(SizeLimits())
    valid = _valid_camera_info()
    assert gate.update(valid) is None
    good = gate.camera
    accepted = rejected = 0
    for _ in range(n):
        why = gate.update(_camera_info(rng, valid))  # must not raise
        if why is None:
            accepted += 1
            cam = gate.camera
            assert 0 < cam.width <= 8192 and 0 < cam.height <= 8192
            assert np.isfinite(cam.K).all() and cam.K[0, 0] > 0 and cam.K[1, 1] > 0
            assert gate.update(valid) is None  # back to the rig for the next one
        else:
            rejected += 1
            assert isinstance(why, str) and why
            assert gate.camera.width == good.width and gate.camera.height == good.height
    assert accepted + rejected == n
    assert gate.rejected == rejected and gate.accepted == 1 + 2 * accepted
    assert rejected > n // 4  # the fuzz does reach the checks


def _fuzz_sensor(modality: str, n: int, seed: int, pipeline: PerceptionPipeline,
                 run_every: int) -> None:
    rng = random.Random(seed)
    base = set_messages(RIG, 0.3, STAMP)
    cache = PreparedInputCache(CFG)
    used = rejected = degraded = put_ok = 0
    for i in range(n):
        msg = (_image(rng, base[modality]) if modality in ('rgb', 'depth')
               else _cloud(rng, base[modality], modality == 'event'))
        if modality in ('lidar', 'event'):  # the executor thread's on-arrival step
            put_ok += cache.put(modality, msg, GEOM)
        messages = {**base, modality: msg}
        errors: dict[str, str] = {}
        frame = frame_from_messages(STAMP, messages, GEOM,
                                    errors=errors)
        out = build_model_input(frame, CFG, errors=errors)
        outcomes = [modality in errors, modality in out.degraded and modality not in out.tensors,
                    modality in out.tensors]
        assert sum(outcomes) == 1, (i, errors, out.degraded, list(out.tensors))
        rejected += outcomes[0]
        degraded += outcomes[1]
        used += outcomes[2]
        assert set(out.tensors) >= {'rgb', 'depth', 'lidar', 'event'} - {modality}
        if i % run_every == 0:  # the worker's whole set, model included
            synced = SyncedSet(STAMP, messages, dict.fromkeys(messages, STAMP), frozenset())
            result = pipeline.run(synced, GEOM)
            assert result.labels.shape == (RIG.height, RIG.width)
            assert (modality in result.errors) == outcomes[0]
    assert used + degraded + rejected == n
    assert rejected > n // 4
    if modality in ('lidar', 'event'):
        assert put_ok + sum(cache.failures.values()) == n


INPUTS = ('rgb', 'depth', 'lidar', 'event')


@pytest.mark.parametrize('modality', INPUTS)
def test_fuzz_sensor_messages(modality, pipeline):
    _fuzz_sensor(modality, 300, seed=INPUTS.index(modality), pipeline=pipeline, run_every=60)


def test_fuzz_camera_info():
    _fuzz_camera_info(400, seed=7)


@pytest.mark.slow
@pytest.mark.parametrize('modality', INPUTS)
def test_fuzz_sensor_messages_long(modality, pipeline):
    _fuzz_sensor(modality, 10_000, seed=100 + INPUTS.index(modality), pipeline=pipeline,
                 run_every=500)


@pytest.mark.slow
def test_fuzz_camera_info_long():
    _fuzz_camera_info(10_000, seed=107)
