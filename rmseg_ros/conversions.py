"""ROS message <-> numpy conversions for Image, CompressedImage, PointCloud2 and CameraInfo.

Why one long module: the four message families share the layout checks (step, padding,
endianness, size limits) that make every conversion safe on untrusted messages.

Everything here is duck-typed on the message fields, so the same code reads messages received by
rclpy and messages deserialised by `rosbags` (training reads bags with the very functions the nodes
use). No ROS package is imported at module level: `numpy_to_image` and `array_to_pointcloud2`
import `sensor_msgs.msg` lazily, and only when no `msg_cls` is given.

Layout rules honoured on the way in (what an ad-hoc `np.frombuffer(...).reshape(...)` misses):
row padding (`step` > width * bytes per pixel, `row_step` > width * `point_step`), per-point padding
(`point_step` larger than the fields), big-endian payloads (`is_bigendian`) and sub-array fields
(`count` > 1). Results are zero-copy views of the message buffer whenever the layout allows it,
so they share memory with (and keep alive) the message's data.
"""

from __future__ import annotations

import array
import importlib
import itertools
import re
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from rmseg_ros.camera import CameraIntrinsics, SizeLimits, validate_intrinsics

__all__ = [
    'SUPPORTED_ENCODINGS',
    'CameraInfoGate',
    'array_to_pointcloud2',
    'camera_info_to_intrinsics',
    'encoding_layout',
    'image_to_numpy',
    'image_to_rgb',
    'numpy_to_image',
    'pointcloud2_to_array',
]

_NATIVE_BIG = sys.byteorder == 'big'

# Named encodings of sensor_msgs/image_encodings.hpp: name -> (element dtype, channels).
_NAMED_ENCODINGS: dict[str, tuple[str, int]] = {
    'rgb8': ('u1', 3), 'bgr8': ('u1', 3), 'rgba8': ('u1', 4), 'bgra8': ('u1', 4),
    'rgb16': ('u2', 3), 'bgr16': ('u2', 3), 'rgba16': ('u2', 4), 'bgra16': ('u2', 4),
    'mono8': ('u1', 1), 'mono16': ('u2', 1),
    'bayer_rggb8': ('u1', 1), 'bayer_bggr8': ('u1', 1),
    'bayer_gbrg8': ('u1', 1), 'bayer_grbg8': ('u1', 1),
    'bayer_rggb16': ('u2', 1), 'bayer_bggr16': ('u2', 1),
    'bayer_gbrg16': ('u2', 1), 'bayer_grbg16': ('u2', 1),
    # Packed 4:2:2 YUV: two bytes per pixel.
    'uyvy': ('u1', 2), 'yuv422': ('u1', 2), 'yuyv': ('u1', 2), 'yuv422_yuy2': ('u1', 2),
}
_GENERIC_DEPTHS = {'8U': 'u1', '8S': 'i1', '16U': 'u2', '16S': 'i2', '32S': 'i4', '32F': 'f4',
                   '64F': 'f8'}
_GENERIC_RE = re.compile(r'(8U|8S|16U|16S|32S|32F|64F)C([1-9][0-9]*)')
_MAX_CHANNELS = 512  # OpenCV's CV_CN_MAX

SUPPORTED_ENCODINGS: tuple[str, ...] = (*_NAMED_ENCODINGS, *(
    f'{depth}C{n}' for depth in _GENERIC_DEPTHS for n in (1, 2, 3, 4)))
_ENCODINGS_TEXT = ', '.join(_NAMED_ENCODINGS) + ' and <8U|8S|16U|16S|32S|32F|64F>C<n>'

# sensor_msgs/PointField datatype constants -> numpy element type.
_POINTFIELD_DTYPES: dict[int, str] = {1: 'i1', 2: 'u1', 3: 'i2', 4: 'u2', 5: 'i4', 6: 'u4',
                                      7: 'f4', 8: 'f8'}
_POINTFIELD_NAMES = {1: 'INT8', 2: 'UINT8', 3: 'INT16', 4: 'UINT16', 5: 'INT32', 6: 'UINT32',
                     7: 'FLOAT32', 8: 'FLOAT64'}
_NUMPY_TO_POINTFIELD = {(np.dtype(v).kind, np.dtype(v).itemsize): k
                        for k, v in _POINTFIELD_DTYPES.items()}


# --------------------------------------------------------------------------- helpers


def encoding_layout(encoding: str) -> tuple[np.dtype, int]:
    """(native element dtype, channels) of an Image encoding; ValueError listing the valid ones."""
    named = _NAMED_ENCODINGS.get(encoding)
    if named is not None:
        return np.dtype(named[0]), named[1]
    match = _GENERIC_RE.fullmatch(encoding)
    if match is not None and int(match.group(2)) <= _MAX_CHANNELS:
        return np.dtype(_GENERIC_DEPTHS[match.group(1)]), int(match.group(2))
    raise ValueError(f'unsupported image encoding {encoding!r}; supported: {_ENCODINGS_TEXT}')


def _byte_view(data: Any) -> np.ndarray:
    """The message's `data` as a flat uint8 array, without copying when it exposes a buffer
    (rclpy gives array.array('B'), rosbags a numpy uint8 array, users may pass bytes)."""
    if isinstance(data, np.ndarray):
        if data.dtype == np.uint8 and data.ndim == 1 and data.flags.c_contiguous:
            return data
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError):  # a list of ints, or a buffer with a wider item type
        return np.asarray(data, dtype=np.uint8).reshape(-1)


def _lookup(msg_cls: Any, typename: str) -> Any:
    """The message class for `typename` ('pkg/msg/Name') in the family `msg_cls` belongs to:
    None -> rclpy's generated class; a rosbags Typestore -> its class; a rosbags class -> its
    sibling in the same generated module; an rclpy class -> the class of that package."""
    pkg, _, short = typename.split('/')
    if msg_cls is None:
        return getattr(importlib.import_module(f'{pkg}.msg'), short)
    types = getattr(msg_cls, 'types', None)
    if isinstance(types, dict):
        if typename not in types:
            raise ValueError(f'the typestore has no {typename}')
        return types[typename]
    msgtype = getattr(msg_cls, '__msgtype__', None)
    if msgtype is not None:
        if msgtype == typename:
            return msg_cls
        module = sys.modules.get(msg_cls.__module__)
        found = getattr(module, typename.replace('/', '__'), None)
        if found is None:
            raise ValueError(f'cannot find {typename} next to {msgtype}; pass the typestore '
                             'as msg_cls instead')
        return found
    if msg_cls.__name__ == short:
        return msg_cls
    return getattr(importlib.import_module(f'{pkg}.msg'), short)


def _is_dataclass_msg(cls: Any) -> bool:
    """rosbags messages are dataclasses built with every field at once (no defaults)."""
    return hasattr(cls, '__msgtype__') and hasattr(cls, '__dataclass_fields__')


def _default_header(cls: Any) -> Any:
    header_cls = _lookup(cls, 'std_msgs/msg/Header')
    time_cls = _lookup(cls, 'builtin_interfaces/msg/Time')
    return header_cls(stamp=time_cls(sec=0, nanosec=0), frame_id='')


def _set_uint8_data(msg: Any, flat: np.ndarray) -> None:
    """Put bytes into an rclpy message's uint8[] field with a single memcpy.

    The generated setter runs `array.array('B', value)` on whatever it gets, which is a second
    full copy (bytes) or a per-element loop (numpy, memoryview). We build the array.array
    ourselves (one memcpy) and store it in the slot the setter would have written, which is the
    exact state the setter leaves behind. Non-generated classes go through the public setter.
    """
    buf = array.array('B')
    buf.frombytes(flat)
    cls = type(msg)
    if isinstance(getattr(cls, 'data', None), property) and '_data' in getattr(
            cls, '__slots__', ()):
        msg._data = buf
    else:
        msg.data = buf


# --------------------------------------------------------------------------- images

# ROS Bayer encodings -> OpenCV conversion codes. OpenCV names a pattern by the second row's
# second and third pixels, so ROS 'rggb' (R at (0, 0)) is OpenCV's 'BayerBG' (cv_bridge's table);
# the test checks each with a mosaic of known colour.
_BAYER_TO_RGB: dict[str, str] = {
    f'bayer_{pattern}{bits}': f'COLOR_{cv_name}2RGB' for bits in (8, 16)
    for pattern, cv_name in (('rggb', 'BayerBG'), ('bggr', 'BayerRG'), ('gbrg', 'BayerGR'),
                             ('grbg', 'BayerGB'))}


def image_to_numpy(msg: Any) -> np.ndarray:
    """Image or CompressedImage -> ndarray, (H, W) for one channel, (H, W, C) otherwise.

    Image: values in the encoding's own channel order (bgr8 stays BGR) and native byte order.
    The result is a zero-copy view of `msg.data` unless the data are big-endian on this machine
    (converted copy) or `step` is not a multiple of the element size (contiguous copy). With row
    padding the view is non-contiguous; use np.ascontiguousarray where that matters.

    CompressedImage (jpeg/png, told apart by its `format` field): decoded with OpenCV keeping
    depth and alpha (16-bit png stays uint16); colour comes back in RGB / RGBA order (the
    image_transport convention `'<enc>; <codec> compressed rgb8'` is honoured too).
    """
    if hasattr(msg, 'format') and not hasattr(msg, 'encoding'):
        return _decode_compressed(msg)
    dtype, channels = encoding_layout(str(msg.encoding))
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    itemsize = dtype.itemsize
    row_bytes = width * channels * itemsize
    shape: tuple[int, ...] = (height, width) if channels == 1 else (height, width, channels)
    if step < row_bytes:
        raise ValueError(f'image step {step} is smaller than a row of {width} x {channels} x '
                         f'{itemsize} = {row_bytes} bytes ({msg.encoding})')
    data = _byte_view(msg.data)
    if data.size < height * step:
        raise ValueError(f'image data has {data.size} bytes, fewer than height * step = '
                         f'{height} * {step} = {height * step}')
    if height == 0 or width == 0:
        return np.zeros(shape, dtype)
    wire = dtype.newbyteorder('>' if msg.is_bigendian else '<') if itemsize > 1 else dtype
    strides = (step, itemsize) if channels == 1 else (step, channels * itemsize, itemsize)
    out = np.ndarray(shape, wire, buffer=data, strides=strides)
    if not wire.isnative:
        return out.astype(dtype)  # native byte order, contiguous
    if step % itemsize:
        return out.copy()  # rows at odd byte offsets would trip consumers such as torch
    return out


def _decode_compressed(msg: Any) -> np.ndarray:
    import cv2  # only compressed images need OpenCV

    fmt = str(msg.format)
    if 'compresseddepth' in fmt.lower():
        raise ValueError(f'compressedDepth images are not supported (format {fmt!r})')
    data = _byte_view(msg.data)
    if data.size == 0:
        raise ValueError(f'CompressedImage (format {fmt!r}) has no data')
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f'could not decode CompressedImage data ({data.size} bytes, '
                         f'format {fmt!r}) as jpeg or png')
    # OpenCV decodes into BGR(A). When the publisher handed RGB bytes to the encoder
    # (format '... compressed rgb8'), the decoded channels are already RGB.
    match = re.search(r'compressed\s+(\w+)', fmt)
    stored_rgb = match is not None and match.group(1).startswith('rgb')
    if img.ndim == 3 and not stored_rgb:
        if img.shape[2] == 3:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        elif img.shape[2] == 4:
            img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA)
    return img


def image_to_rgb(msg: Any) -> np.ndarray:
    """Any 8-bit colour or mono Image / CompressedImage -> (H, W, 3) uint8 RGB, contiguous,
    for the model's rgb input (mono is replicated, alpha dropped)."""
    arr = image_to_numpy(msg)
    if hasattr(msg, 'encoding'):
        encoding = str(msg.encoding)
    elif arr.dtype != np.uint8:  # decoded CompressedImage: RGB(A) or mono
        encoding = ''
    elif arr.ndim == 2:
        encoding = 'mono8'
    else:
        encoding = {3: 'rgb8', 4: 'rgba8'}.get(arr.shape[2], '')
    if encoding in ('rgb8', '8UC3'):
        return np.ascontiguousarray(arr)
    if encoding == 'bgr8':
        return np.ascontiguousarray(arr[..., ::-1])
    if encoding == 'rgba8':
        return np.ascontiguousarray(arr[..., :3])
    if encoding == 'bgra8':
        return np.ascontiguousarray(arr[..., 2::-1])
    if encoding in ('mono8', '8UC1'):
        return np.repeat(arr[..., None], 3, axis=2)
    if encoding in _BAYER_TO_RGB:
        import cv2  # only Bayer images need OpenCV here

        rgb = cv2.cvtColor(np.ascontiguousarray(arr), getattr(cv2, _BAYER_TO_RGB[encoding]))
        if rgb.dtype == np.uint16:  # 16-bit mosaics: the top 8 bits, as cv_bridge's rgb8
            rgb = (rgb >> 8).astype(np.uint8)
        return rgb
    raise ValueError(f'cannot make 8-bit RGB from encoding {encoding or arr.dtype!r}; expected '
                     'rgb8, bgr8, rgba8, bgra8, mono8, 8UC1, 8UC3 or bayer_<rggb|bggr|gbrg|grbg>'
                     '<8|16>')


def numpy_to_image(array: np.ndarray, encoding: str, header: Any = None, *,
                   msg_cls: Any = None) -> Any:
    """ndarray -> sensor_msgs/Image with a tight `step` and native byte order.

    `array` must have the encoding's element type and (H, W) / (H, W, 1) for one channel,
    (H, W, C) otherwise. `msg_cls` picks the message family: None builds rclpy's
    sensor_msgs.msg.Image (the bytes are copied exactly once); a rosbags Image class or Typestore
    builds a rosbags message whose `data` is a uint8 view of `array` when it is already
    contiguous and native-endian (no copy: it shares memory with `array`).
    """
    dtype, channels = encoding_layout(encoding)
    arr = np.asarray(array)
    if arr.dtype.newbyteorder('=') != dtype:
        raise ValueError(f'encoding {encoding!r} needs {dtype} elements, got {arr.dtype}')
    if channels == 1 and arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    ok_shape = arr.ndim == 2 if channels == 1 else (arr.ndim == 3 and arr.shape[2] == channels)
    if not ok_shape:
        want = '(H, W)' if channels == 1 else f'(H, W, {channels})'
        raise ValueError(f'encoding {encoding!r} needs an array of shape {want}, '
                         f'got {arr.shape}')
    if not arr.dtype.isnative:
        arr = arr.astype(dtype)
    arr = np.ascontiguousarray(arr)
    height, width = int(arr.shape[0]), int(arr.shape[1])
    flat = arr.reshape(-1).view(np.uint8)
    step = width * channels * dtype.itemsize
    cls = _lookup(msg_cls, 'sensor_msgs/msg/Image')
    if _is_dataclass_msg(cls):
        return cls(header=header if header is not None else _default_header(cls),
                   height=height, width=width, encoding=encoding, is_bigendian=int(_NATIVE_BIG),
                   step=step, data=flat)
    msg = cls()
    if header is not None:
        msg.header = header
    msg.height, msg.width, msg.encoding = height, width, encoding
    msg.is_bigendian, msg.step = int(_NATIVE_BIG), step
    _set_uint8_data(msg, flat)
    return msg


# --------------------------------------------------------------------------- point clouds


def _cloud_dtype(fields: Sequence[Any], point_step: int, big_endian: bool) -> np.dtype:
    """Structured dtype (itemsize = point_step) of a PointCloud2's fields, in wire byte order."""
    order = '>' if big_endian else '<'
    names: list[str] = []
    formats: list[np.dtype] = []
    offsets: list[int] = []
    spans: list[tuple[int, int, str]] = []
    for field in fields:
        name, offset = str(field.name), int(field.offset)
        datatype, count = int(field.datatype), int(field.count)
        if not name:
            raise ValueError('PointField with an empty name')
        if name in names:
            raise ValueError(f'PointField name {name!r} appears twice')
        if datatype not in _POINTFIELD_DTYPES:
            valid = ', '.join(f'{k}={v}' for k, v in _POINTFIELD_NAMES.items())
            raise ValueError(f'PointField {name!r} has unknown datatype {datatype} '
                             f'(valid: {valid})')
        if count < 1:
            raise ValueError(f'PointField {name!r} has count {count}; it must be >= 1')
        base = np.dtype(_POINTFIELD_DTYPES[datatype]).newbyteorder(order)
        size = base.itemsize * count
        if offset < 0 or offset + size > point_step:
            raise ValueError(f'PointField {name!r} (offset {offset}, {size} bytes) lies outside '
                             f'the point of point_step {point_step} bytes')
        names.append(name)
        formats.append(base if count == 1 else np.dtype((base, (count,))))
        offsets.append(offset)
        spans.append((offset, offset + size, name))
    spans.sort()
    for (_, end_a, name_a), (start_b, _, name_b) in itertools.pairwise(spans):
        if start_b < end_a:
            raise ValueError(f'PointFields {name_a!r} and {name_b!r} overlap')
    return np.dtype({'names': names, 'formats': formats, 'offsets': offsets,
                     'itemsize': point_step})


def _select_fields(dtype: np.dtype, fields: Sequence[str]) -> np.dtype:
    """The same layout restricted to `fields`, in the requested order (still a view)."""
    if isinstance(fields, str):
        fields = [fields]
    missing = [f for f in fields if f not in dtype.names]
    if missing:
        raise ValueError(f'cloud has no field(s) {missing}; it has {list(dtype.names)}')
    if len(set(fields)) != len(fields):
        raise ValueError(f'fields requested twice: {list(fields)}')
    return np.dtype({'names': list(fields),
                     'formats': [dtype.fields[f][0] for f in fields],
                     'offsets': [dtype.fields[f][1] for f in fields],
                     'itemsize': dtype.itemsize})


def pointcloud2_to_array(msg: Any, fields: Sequence[str] | None = None) -> np.ndarray:
    """PointCloud2 -> structured ndarray: shape (width,) when height == 1, else (height, width).

    The dtype mirrors the message: one named field per PointField at its offset (count > 1
    gives a sub-array), itemsize = point_step. It is a zero-copy view of `msg.data` unless the
    cloud is big-endian on this machine (then a native-endian copy with the same layout).
    `fields` restricts the result to those names, in that order; for a packed (N, k) float array
    use numpy.lib.recfunctions.structured_to_unstructured on the result.
    """
    height, width = int(msg.height), int(msg.width)
    point_step, row_step = int(msg.point_step), int(msg.row_step)
    big = bool(msg.is_bigendian)
    wire = _cloud_dtype(msg.fields, point_step, big)
    if fields is not None:
        wire = _select_fields(wire, fields)
    native = wire.newbyteorder('=')
    shape = (width,) if height == 1 else (height, width)
    if height == 0 or width == 0:
        return np.zeros(shape, native)
    if point_step == 0:
        raise ValueError('PointCloud2 has points but point_step is 0')
    if width * point_step > row_step:
        raise ValueError(f'point_step * width = {point_step} * {width} = '
                         f'{point_step * width} exceeds row_step {row_step}')
    data = _byte_view(msg.data)
    if data.size < height * row_step:
        raise ValueError(f'cloud data has {data.size} bytes, fewer than height * row_step = '
                         f'{height} * {row_step} = {height * row_step}')
    out = np.ndarray((height, width), wire, buffer=data, strides=(row_step, point_step))
    if big != _NATIVE_BIG and any(wire.fields[n][0].base.itemsize > 1 for n in wire.names):
        out = out.astype(native)
    elif wire != native:
        out = out.view(native)  # one-byte fields only: same bytes, native-labelled dtype
    return out.reshape(shape)


def array_to_pointcloud2(array: np.ndarray, header: Any = None, *, msg_cls: Any = None,
                         is_dense: bool | None = None) -> Any:
    """Structured ndarray (1-D, or 2-D organised) -> PointCloud2 in native byte order.

    Field offsets and the itemsize (point_step, padding included) are taken from the dtype, so
    a cloud read with pointcloud2_to_array goes back byte for byte. `is_dense` defaults to
    "x, y, z all finite" when the cloud has floating x, y, z fields, else False.
    `msg_cls` as in numpy_to_image (None: rclpy; a rosbags class or Typestore: rosbags).
    """
    arr = np.asarray(array)
    if arr.dtype.names is None:
        raise ValueError(f'array_to_pointcloud2 needs a structured array, got {arr.dtype}')
    if arr.ndim not in (1, 2):
        raise ValueError(f'cloud array must be 1-D or 2-D (organised), got shape {arr.shape}')
    layout: list[tuple[int, str, int, int]] = []
    for name in arr.dtype.names:
        fdtype, offset = arr.dtype.fields[name][:2]
        base, count = fdtype, 1
        if fdtype.subdtype is not None:
            base, sub_shape = fdtype.subdtype
            count = int(np.prod(sub_shape))
        key = (base.kind, base.itemsize)
        if base.names is not None or key not in _NUMPY_TO_POINTFIELD or count < 1:
            raise ValueError(f'field {name!r} has type {fdtype}, which PointField cannot carry '
                             '(int8..int32, uint8..uint32, float32, float64, fixed sub-arrays)')
        layout.append((int(offset), name, _NUMPY_TO_POINTFIELD[key], count))
    layout.sort()
    native = arr.dtype.newbyteorder('=')
    if native != arr.dtype:
        arr = arr.astype(native)
    arr = np.ascontiguousarray(arr)
    height, width = (1, arr.shape[0]) if arr.ndim == 1 else arr.shape
    point_step = arr.dtype.itemsize
    flat = arr.reshape(-1).view(np.uint8)
    if is_dense is None:
        xyz = [n for n in ('x', 'y', 'z') if n in arr.dtype.names]
        is_dense = len(xyz) == 3 and all(arr.dtype[n].kind == 'f' for n in xyz) and all(
            bool(np.isfinite(arr[n]).all()) for n in xyz)

    cls = _lookup(msg_cls, 'sensor_msgs/msg/PointCloud2')
    field_cls = _lookup(cls, 'sensor_msgs/msg/PointField')
    pfields = [field_cls(name=name, offset=offset, datatype=datatype, count=count)
               for offset, name, datatype, count in layout]
    common = dict(height=int(height), width=int(width), fields=pfields,
                  is_bigendian=bool(_NATIVE_BIG), point_step=int(point_step),
                  row_step=int(point_step * width), is_dense=bool(is_dense))
    if _is_dataclass_msg(cls):
        return cls(header=header if header is not None else _default_header(cls), data=flat,
                   **common)
    msg = cls()
    if header is not None:
        msg.header = header
    for key, value in common.items():
        setattr(msg, key, value)
    _set_uint8_data(msg, flat)
    return msg


# --------------------------------------------------------------------------- camera info


def _matrix(msg: Any, name: str, size: int) -> np.ndarray:
    """A CameraInfo matrix field (ROS 2 lower case, ROS 1 upper case) as float64 copy."""
    value = getattr(msg, name, None)
    if value is None:
        value = getattr(msg, name.upper())
    out = np.array(value, dtype=np.float64).reshape(-1)
    if size and out.size != size:
        raise ValueError(f'CameraInfo.{name} has {out.size} values, expected {size}')
    return out


def stamp_ns(msg: Any) -> int:
    """A message's header stamp in integer nanoseconds (the synchroniser's and bags' time)."""
    stamp = msg.header.stamp
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def camera_info_to_intrinsics(msg: Any) -> CameraIntrinsics:
    """CameraInfo -> CameraIntrinsics. An all-zero P (not provided) becomes None and an all-zero
    R (not provided) the identity. Binning and ROI are not applied: the intrinsics describe the
    full-resolution sensor image as the message states them."""
    k = _matrix(msg, 'k', 9).reshape(3, 3)
    r = _matrix(msg, 'r', 9).reshape(3, 3)
    p = _matrix(msg, 'p', 12).reshape(3, 4)
    return CameraIntrinsics(
        width=int(msg.width), height=int(msg.height), K=k, D=_matrix(msg, 'd', 0),
        R=r if r.any() else np.eye(3), P=p if p.any() else None,
        distortion_model=str(msg.distortion_model))


class CameraInfoGate:
    """The camera model in use: each CameraInfo is converted and validated
    (camera.validate_intrinsics); an invalid one is rejected with its reason and counted, and
    the last valid one stays in use (one bad message must not re-size or misalign everything).
    Never raises: any failure of the conversion is a rejection."""

    def __init__(self, limits: SizeLimits | None = None) -> None:
        self.limits = limits or SizeLimits()
        self.camera: CameraIntrinsics | None = None
        self.frame_id = ''
        self.accepted = 0
        self.rejected = 0

    def update(self, msg: Any) -> str | None:
        """Take `msg` if valid; otherwise the reason it was rejected."""
        try:
            width, height = int(msg.width), int(msg.height)
            self.limits.check('CameraInfo', width, height)  # before converting anything
            camera = camera_info_to_intrinsics(msg)
            validate_intrinsics(camera, self.limits)
            frame_id = str(msg.header.frame_id)
        except Exception as exc:  # any malformed message is a rejection, whatever it raises
            self.rejected += 1
            text = str(exc) if isinstance(exc, ValueError) else f'{type(exc).__name__}: {exc}'
            return text
        self.camera = camera
        self.frame_id = frame_id
        self.accepted += 1
        return None
