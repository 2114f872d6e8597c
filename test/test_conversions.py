"""rmseg_ros.conversions against messages built byte by byte here, for every image encoding and
PointField datatype, with and without padding, in both byte orders; on rclpy's sensor_msgs types
and on rosbags' typestore classes (the duck typing training relies on)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.lib import recfunctions
from rclpy.serialization import deserialize_message, serialize_message
from rosbags.typesys import Stores, get_typestore
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2, PointField
from std_msgs.msg import Header

from rmseg_ros.conversions import (
    SUPPORTED_ENCODINGS,
    array_to_pointcloud2,
    camera_info_to_intrinsics,
    encoding_layout,
    image_to_numpy,
    image_to_rgb,
    numpy_to_image,
    pointcloud2_to_array,
)

TYPESTORE = get_typestore(Stores.ROS2_KILTED)
FAST = settings(max_examples=10, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MEDIUM = settings(max_examples=40, deadline=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Element type per encoding, written out independently of the module's table.
ENCODING_TYPES = {
    'rgb8': ('u1', 3), 'bgr8': ('u1', 3), 'rgba8': ('u1', 4), 'bgra8': ('u1', 4),
    'rgb16': ('u2', 3), 'bgr16': ('u2', 3), 'rgba16': ('u2', 4), 'bgra16': ('u2', 4),
    'mono8': ('u1', 1), 'mono16': ('u2', 1), 'bayer_rggb8': ('u1', 1), 'bayer_grbg16': ('u2', 1),
    'yuv422': ('u1', 2), 'yuyv': ('u1', 2),
    **{f'{d}C{n}': (t, n) for d, t in [('8U', 'u1'), ('8S', 'i1'), ('16U', 'u2'), ('16S', 'i2'),
                                         ('32S', 'i4'), ('32F', 'f4'), ('64F', 'f8')]
       for n in (1, 2, 3, 4)},
    '32FC7': ('f4', 7),
}
PF_TYPES = {PointField.INT8: 'i1', PointField.UINT8: 'u1', PointField.INT16: 'i2',
            PointField.UINT16: 'u2', PointField.INT32: 'i4', PointField.UINT32: 'u4',
            PointField.FLOAT32: 'f4', PointField.FLOAT64: 'f8'}


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Exact equality including NaN payloads and signed zeros."""
    return a.shape == b.shape and np.ascontiguousarray(a).tobytes() == \
        np.ascontiguousarray(b).tobytes()


def image_shape(height: int, width: int, channels: int) -> tuple[int, ...]:
    return (height, width) if channels == 1 else (height, width, channels)


@st.composite
def image_case(draw, encoding: str):
    kind, channels = ENCODING_TYPES[encoding]
    height, width = draw(st.integers(1, 5)), draw(st.integers(1, 6))
    values = draw(hnp.arrays(np.dtype(kind), image_shape(height, width, channels)))
    pad = draw(st.sampled_from([0, 0, 1, 3, 8]))
    big = draw(st.booleans())
    filler = draw(st.integers(0, 255))
    return values, pad, big, filler


# ----------------------------------------------------------------------------- images


def test_supported_encodings_match_the_reference_table():
    for encoding, (kind, channels) in ENCODING_TYPES.items():
        assert encoding_layout(encoding) == (np.dtype(kind), channels)
    assert {'rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8', 'mono16', '8UC1', '8UC2', '8UC3', '8UC4',
            '16UC1', '32FC1', '16SC1', '32SC1', '64FC1', '8SC1'} <= set(SUPPORTED_ENCODINGS)


@pytest.mark.parametrize('encoding', sorted(ENCODING_TYPES))
@FAST
@given(data=st.data())
def test_image_with_padding_and_byte_order_decodes_to_native_values(encoding, data):
    """Rows written as wire bytes + junk padding, big- or little-endian, read back exactly."""
    values, pad, big, filler = data.draw(image_case(encoding))
    wire = values.dtype.newbyteorder('>' if big else '<')
    row_bytes = values[0].nbytes
    rows = [values[r].astype(wire).tobytes() + bytes([filler]) * pad
            for r in range(values.shape[0])]
    assert all(len(r) == row_bytes + pad for r in rows)
    msg = Image(height=values.shape[0], width=values.shape[1], encoding=encoding,
                is_bigendian=int(big), step=row_bytes + pad, data=b''.join(rows))
    out = image_to_numpy(msg)
    assert out.dtype == values.dtype and out.dtype.isnative
    assert same_bits(out, values)
    buffer = np.frombuffer(msg.data, np.uint8)
    itemsize, step = values.dtype.itemsize, row_bytes + pad
    if (not big or itemsize == 1) and step % itemsize == 0:
        assert np.shares_memory(out, buffer)  # zero copy whenever the layout allows
    if big and itemsize > 1:
        assert not np.shares_memory(out, buffer)  # swapped into a native copy
    assert all(stride % itemsize == 0 for stride in out.strides)  # no misaligned rows


@pytest.mark.parametrize('encoding', sorted(ENCODING_TYPES))
@FAST
@given(data=st.data())
def test_numpy_to_image_round_trip(encoding, data):
    values = data.draw(image_case(encoding))[0]
    header = Header(frame_id='cam')
    header.stamp.sec = 12
    msg = numpy_to_image(values, encoding, header)
    assert isinstance(msg, Image)
    assert (msg.height, msg.width, msg.encoding, msg.is_bigendian) == (
        values.shape[0], values.shape[1], encoding, 0)
    assert msg.step == values[0].nbytes and len(msg.data) == values.nbytes
    assert msg.header.frame_id == 'cam' and msg.header.stamp.sec == 12
    assert same_bits(image_to_numpy(msg), values)
    # Strided and byte-swapped inputs give the same message bytes.
    flipped = np.ascontiguousarray(values[:, ::-1]).astype(values.dtype.newbyteorder('>'))
    swapped_view = flipped[:, ::-1]  # negative stride, big-endian, same values
    assert bytes(numpy_to_image(swapped_view, encoding).data) == bytes(msg.data)
    # Through real serialisation as well.
    again = deserialize_message(serialize_message(msg), Image)
    assert same_bits(image_to_numpy(again), values)


def test_image_layout_written_by_hand():
    """Byte positions spelled out, not produced by numpy: mono16 big-endian with 2 bytes of
    padding per row, rgb8 with 1 byte of padding, 32FC1 little-endian."""
    data = bytes([0x01, 0x02, 0x03, 0x04, 0xEE, 0xEE, 0xFF, 0x00, 0x00, 0x10, 0xEE, 0xEE])
    msg = Image(height=2, width=2, encoding='mono16', is_bigendian=1, step=6, data=data)
    assert image_to_numpy(msg).tolist() == [[0x0102, 0x0304], [0xFF00, 0x0010]]
    data = bytes([1, 2, 3, 4, 5, 6, 99, 7, 8, 9, 10, 11, 12, 99])
    msg = Image(height=2, width=2, encoding='rgb8', is_bigendian=0, step=7, data=data)
    assert image_to_numpy(msg).tolist() == [[[1, 2, 3], [4, 5, 6]], [[7, 8, 9], [10, 11, 12]]]
    msg = Image(height=1, width=2, encoding='32FC1', is_bigendian=0, step=8,
                data=bytes([0, 0, 0x80, 0x3F, 0, 0, 0xC0, 0x7F]))
    out = image_to_numpy(msg)
    assert out[0, 0] == 1.0 and np.isnan(out[0, 1])


def test_odd_step_gives_a_contiguous_copy():
    values = np.arange(6, dtype=np.uint16).reshape(2, 3)
    data = values[0].tobytes() + b'\x00' + values[1].tobytes() + b'\x00'
    out = image_to_numpy(Image(height=2, width=3, encoding='16UC1', step=7, data=data))
    assert out.flags.c_contiguous and np.array_equal(out, values)


def test_image_from_rosbags_typestore_round_trip():
    """numpy_to_image builds rosbags messages too; they serialise to the same CDR as rclpy's."""
    rng = np.random.default_rng(3)
    values = rng.integers(0, 65535, (7, 5), dtype=np.uint16)
    image_cls = TYPESTORE.types['sensor_msgs/msg/Image']
    bag_msg = numpy_to_image(values, 'mono16', msg_cls=image_cls)
    assert type(bag_msg) is image_cls and bag_msg.step == 10
    assert np.shares_memory(bag_msg.data, values)  # no copy at all for rosbags messages
    cdr = TYPESTORE.serialize_cdr(bag_msg, 'sensor_msgs/msg/Image')
    from_bag = TYPESTORE.deserialize_cdr(cdr, 'sensor_msgs/msg/Image')
    assert np.array_equal(image_to_numpy(from_bag), values)
    # The rclpy message deserialised by rosbags, and vice versa.
    rclpy_cdr = serialize_message(numpy_to_image(values, 'mono16'))
    from_rclpy = TYPESTORE.deserialize_cdr(rclpy_cdr, 'sensor_msgs/msg/Image')
    assert np.array_equal(image_to_numpy(from_rclpy), values)
    assert np.array_equal(image_to_numpy(deserialize_message(bytes(cdr), Image)), values)
    # Passing the typestore itself works as well.
    assert type(numpy_to_image(values, 'mono16', msg_cls=TYPESTORE)) is image_cls


@pytest.mark.parametrize('kwargs, needle', [
    (dict(encoding='weird8', step=2, data=bytes(4)), 'unsupported image encoding'),
    (dict(encoding='mono8', step=2, data=bytes(3)), r'fewer than height \* step'),
    (dict(encoding='rgb8', step=5, data=bytes(12)), 'smaller than a row'),
    (dict(encoding='mono16', step=3, data=bytes(6)), 'smaller than a row'),
])
def test_bad_images_raise_value_error(kwargs, needle):
    msg = Image(height=2, width=2, **kwargs)
    with pytest.raises(ValueError, match=needle) as err:
        image_to_numpy(msg)
    if 'encoding' in needle:
        for name in ('rgb8', 'bgr8', 'mono16', '32F'):
            assert name in str(err.value)


@pytest.mark.parametrize('array, encoding, needle', [
    (np.zeros((2, 2, 3), np.uint8), 'nope', 'unsupported image encoding'),
    (np.zeros((2, 2, 3), np.float32), 'rgb8', 'needs uint8'),
    (np.zeros((2, 2), np.uint8), 'rgb8', r'shape \(H, W, 3\)'),
    (np.zeros((2, 2, 4), np.uint8), 'rgb8', r'shape \(H, W, 3\)'),
    (np.zeros((2, 2, 2), np.uint16), 'mono16', r'shape \(H, W\)'),
    (np.zeros(4, np.uint8), 'mono8', r'shape \(H, W\)'),
])
def test_numpy_to_image_validates(array, encoding, needle):
    with pytest.raises(ValueError, match=needle):
        numpy_to_image(array, encoding)


def test_numpy_to_image_accepts_single_channel_with_trailing_axis():
    values = np.arange(6, dtype=np.float32).reshape(2, 3, 1)
    assert np.array_equal(image_to_numpy(numpy_to_image(values, '32FC1')), values[..., 0])


# ----------------------------------------------------------------------------- compressed


def compressed(data: bytes, fmt: str, cls=CompressedImage):
    if cls is CompressedImage:
        return CompressedImage(format=fmt, data=data)
    header = TYPESTORE.types['std_msgs/msg/Header'](
        stamp=TYPESTORE.types['builtin_interfaces/msg/Time'](sec=0, nanosec=0), frame_id='')
    return cls(header=header, format=fmt, data=np.frombuffer(data, np.uint8))


def test_png_is_exact_and_rgb_ordered():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (31, 17, 3), dtype=np.uint8)
    ok, png = cv2.imencode('.png', rgb[..., ::-1])  # OpenCV encodes BGR
    assert ok
    for cls in (CompressedImage, TYPESTORE.types['sensor_msgs/msg/CompressedImage']):
        out = image_to_numpy(compressed(png.tobytes(), 'rgb8; png compressed bgr8', cls))
        assert out.dtype == np.uint8 and np.array_equal(out, rgb)
    # A publisher that handed RGB bytes to the encoder says so in the format string.
    ok, png_rgb = cv2.imencode('.png', rgb)
    assert np.array_equal(image_to_numpy(compressed(png_rgb.tobytes(),
                                                    'rgb8; png compressed rgb8')), rgb)


def test_png_keeps_mono_depth_and_alpha():
    rng = np.random.default_rng(1)
    mono16 = rng.integers(0, 65536, (9, 11), dtype=np.uint16)
    out = image_to_numpy(compressed(cv2.imencode('.png', mono16)[1].tobytes(), 'png'))
    assert out.dtype == np.uint16 and np.array_equal(out, mono16)
    mono8 = rng.integers(0, 256, (9, 11), dtype=np.uint8)
    out = image_to_numpy(compressed(cv2.imencode('.png', mono8)[1].tobytes(), 'mono8; png'))
    assert out.shape == (9, 11) and np.array_equal(out, mono8)
    rgba = rng.integers(0, 256, (5, 6, 4), dtype=np.uint8)
    bgra = rgba[..., [2, 1, 0, 3]]
    out = image_to_numpy(compressed(cv2.imencode('.png', bgra)[1].tobytes(), 'png'))
    assert np.array_equal(out, rgba)


def test_jpeg_within_tolerance_and_rgb_ordered():
    yy, xx = np.mgrid[0:48, 0:64]
    rgb = np.stack([200 + 0 * xx, xx * 2, yy * 2], axis=-1).astype(np.uint8)  # red dominant
    ok, jpg = cv2.imencode('.jpg', rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    out = image_to_numpy(compressed(jpg.tobytes(), 'rgb8; jpeg compressed bgr8'))
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - rgb).mean() < 3.0
    assert out[..., 0].mean() > 190  # red stayed in channel 0


@pytest.mark.parametrize('data, fmt, needle', [
    (b'not an image at all', 'jpeg', 'could not decode'),
    (b'', 'png', 'no data'),
    (b'\x00' * 16, '16UC1; compressedDepth png', 'compressedDepth'),
])
def test_bad_compressed_images_raise(data, fmt, needle):
    with pytest.raises(ValueError, match=needle):
        image_to_numpy(compressed(data, fmt))


def test_image_to_rgb_from_each_8bit_layout():
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (4, 5, 1), dtype=np.uint8)
    cases = {'rgb8': rgb, 'bgr8': rgb[..., ::-1], 'rgba8': np.concatenate([rgb, alpha], 2),
             'bgra8': np.concatenate([rgb[..., ::-1], alpha], 2)}
    for encoding, values in cases.items():
        out = image_to_rgb(numpy_to_image(values, encoding))
        assert out.flags.c_contiguous and np.array_equal(out, rgb), encoding
    gray = rgb[..., 0]
    assert np.array_equal(image_to_rgb(numpy_to_image(gray, 'mono8')),
                          np.stack([gray] * 3, axis=-1))
    png = cv2.imencode('.png', rgb[..., ::-1])[1].tobytes()
    assert np.array_equal(image_to_rgb(compressed(png, 'png')), rgb)
    with pytest.raises(ValueError, match='8-bit RGB'):
        image_to_rgb(numpy_to_image(gray.astype(np.uint16), 'mono16'))


# ----------------------------------------------------------------------------- point clouds


@st.composite
def cloud_layout(draw):
    """Fields with random types, counts, gaps (unaligned too), shuffled message order."""
    n_fields = draw(st.integers(1, 5))
    fields, offset = [], 0
    for i in range(n_fields):
        offset += draw(st.integers(0, 3))
        datatype = draw(st.sampled_from(sorted(PF_TYPES)))
        count = draw(st.integers(1, 3))
        fields.append((f'f{i}', offset, datatype, count))
        offset += np.dtype(PF_TYPES[datatype]).itemsize * count
    point_step = offset + draw(st.integers(0, 5))
    order = draw(st.permutations(range(n_fields)))
    return [fields[i] for i in order], point_step


@st.composite
def cloud_case(draw):
    fields, point_step = draw(cloud_layout())
    height, width = draw(st.sampled_from([1, 1, 2, 3])), draw(st.integers(0, 4))
    row_pad = draw(st.sampled_from([0, 0, 1, 6]))
    big = draw(st.booleans())
    values = {name: draw(hnp.arrays(np.dtype(PF_TYPES[dt]), (height, width, count)))
              for name, _, dt, count in fields}
    return fields, point_step, height, width, row_pad, big, values


def build_cloud(fields, point_step, height, width, row_pad, big, values, filler=0xA7):
    """Write every element at offset + r*row_step + c*point_step by hand."""
    row_step = width * point_step + row_pad
    buf = bytearray([filler]) * (height * row_step)
    order = '>' if big else '<'
    for name, offset, datatype, count in fields:
        wire = np.dtype(PF_TYPES[datatype]).newbyteorder(order)
        for r in range(height):
            for c in range(width):
                pos = r * row_step + c * point_step + offset
                chunk = values[name][r, c].astype(wire).tobytes()
                assert len(chunk) == wire.itemsize * count
                buf[pos:pos + len(chunk)] = chunk
    msg = PointCloud2(height=height, width=width, is_bigendian=big, point_step=point_step,
                      row_step=row_step, data=bytes(buf))
    msg.fields = [PointField(name=n, offset=o, datatype=d, count=k) for n, o, d, k in fields]
    return msg


def expected_field(value: np.ndarray, height: int, count: int) -> np.ndarray:
    out = value[0] if height == 1 else value
    return out[..., 0] if count == 1 else out


@MEDIUM
@given(case=cloud_case())
def test_pointcloud2_to_array_reads_every_layout(case):
    fields, point_step, height, width, _, big, values = case
    msg = build_cloud(*case)
    out = pointcloud2_to_array(msg)
    assert out.shape == ((width,) if height == 1 else (height, width))
    assert list(out.dtype.names) == [f[0] for f in fields]
    assert out.dtype.itemsize == point_step
    for name, _, datatype, count in fields:
        assert out.dtype[name].base == np.dtype(PF_TYPES[datatype])  # native byte order
        assert same_bits(out[name], expected_field(values[name], height, count)), name
    if width and not big:
        assert np.shares_memory(out, np.frombuffer(msg.data, np.uint8))


@MEDIUM
@given(case=cloud_case(), data=st.data())
def test_pointcloud2_field_selection(case, data):
    fields, _, height, _, _, _, values = case
    names = [f[0] for f in fields]
    chosen = data.draw(st.lists(st.sampled_from(names), min_size=1, unique=True))
    out = pointcloud2_to_array(build_cloud(*case), fields=chosen)
    assert list(out.dtype.names) == chosen
    counts = {f[0]: f[3] for f in fields}
    for name in chosen:
        assert same_bits(out[name], expected_field(values[name], height, counts[name]))


@MEDIUM
@given(case=cloud_case(), header_frame=st.text('abc_/09', max_size=5))
def test_array_to_pointcloud2_round_trip(case, header_frame):
    """Cloud -> array -> cloud reproduces the layout and the payload (padding aside)."""
    fields, point_step, height, width, _, _, values = case
    arr = pointcloud2_to_array(build_cloud(*case))
    msg = array_to_pointcloud2(arr, Header(frame_id=header_frame))
    assert isinstance(msg, PointCloud2) and msg.header.frame_id == header_frame
    assert (msg.height, msg.width) == (height, width)
    assert msg.point_step == point_step and msg.row_step == point_step * width
    assert not msg.is_bigendian and len(msg.data) == point_step * width * height
    got = sorted((f.name, f.offset, f.datatype, f.count) for f in msg.fields)
    assert got == sorted(fields)
    back = pointcloud2_to_array(deserialize_message(serialize_message(msg), PointCloud2))
    for name, _, _, count in fields:
        assert same_bits(back[name], expected_field(values[name], height, count))


def test_array_to_pointcloud2_from_plain_dtype_and_is_dense():
    arr = np.zeros(5, dtype=[('x', '>f4'), ('y', 'f4'), ('z', 'f4'), ('ring', 'u2'),
                             ('t', 'f8'), ('rgb', 'u1', (3,))])
    arr['x'] = [1, 2, 3, 4, 5]
    arr['rgb'] = np.arange(15).reshape(5, 3)
    msg = array_to_pointcloud2(arr)
    layout = [(f.name, f.offset, f.datatype, f.count) for f in msg.fields]
    assert layout == [('x', 0, 7, 1), ('y', 4, 7, 1), ('z', 8, 7, 1), ('ring', 12, 4, 1),
                      ('t', 14, 8, 1), ('rgb', 22, 2, 3)]
    assert msg.point_step == 25 and msg.is_dense
    back = pointcloud2_to_array(msg)
    assert back['x'].tolist() == [1, 2, 3, 4, 5] and back['rgb'].tolist() == arr['rgb'].tolist()
    arr['z'][2] = np.nan
    assert not array_to_pointcloud2(arr).is_dense
    assert array_to_pointcloud2(arr, is_dense=True).is_dense
    assert not array_to_pointcloud2(np.zeros(3, [('a', 'f4')])).is_dense  # no x, y, z


def test_organised_cloud_keeps_its_grid_and_the_xyz_view_unstructures():
    grid = np.zeros((4, 6), dtype=[('x', 'f4'), ('y', 'f4'), ('z', 'f4'), ('i', 'u1')])
    grid['x'] = np.arange(24, dtype=np.float32).reshape(4, 6)
    msg = array_to_pointcloud2(grid)
    assert (msg.height, msg.width, msg.row_step) == (4, 6, 6 * 13)
    out = pointcloud2_to_array(msg, fields=['x', 'y', 'z'])
    assert out.shape == (4, 6)
    xyz = recfunctions.structured_to_unstructured(out)
    assert xyz.shape == (4, 6, 3) and np.array_equal(xyz[..., 0], grid['x'])


def test_cloud_round_trip_with_rosbags_typestore():
    rng = np.random.default_rng(5)
    arr = np.zeros(100, dtype={'names': ['x', 'y', 'z', 'ring'],
                               'formats': ['f4', 'f4', 'f4', 'u2'],
                               'offsets': [0, 4, 8, 16], 'itemsize': 32})
    for name in ('x', 'y', 'z'):
        arr[name] = rng.normal(size=100)
    arr['ring'] = rng.integers(0, 64, 100)
    cloud_cls = TYPESTORE.types['sensor_msgs/msg/PointCloud2']
    msg = array_to_pointcloud2(arr, msg_cls=cloud_cls)
    assert type(msg) is cloud_cls
    assert type(msg.fields[0]) is TYPESTORE.types['sensor_msgs/msg/PointField']
    cdr = TYPESTORE.serialize_cdr(msg, 'sensor_msgs/msg/PointCloud2')
    for received in (TYPESTORE.deserialize_cdr(cdr, 'sensor_msgs/msg/PointCloud2'),
                     deserialize_message(bytes(cdr), PointCloud2)):
        back = pointcloud2_to_array(received)
        for name in arr.dtype.names:
            assert np.array_equal(back[name], arr[name])
    rclpy_cdr = serialize_message(array_to_pointcloud2(arr))
    back = pointcloud2_to_array(TYPESTORE.deserialize_cdr(rclpy_cdr, 'sensor_msgs/msg/PointCloud2'))
    assert back.dtype == arr.dtype and same_bits(back, arr)


def _cloud(fields, point_step=16, width=2, height=1, row_step=None, data_len=None):
    row_step = point_step * width if row_step is None else row_step
    msg = PointCloud2(height=height, width=width, point_step=point_step, row_step=row_step,
                      data=bytes(height * row_step if data_len is None else data_len))
    msg.fields = [PointField(name=n, offset=o, datatype=d, count=c) for n, o, d, c in fields]
    return msg


@pytest.mark.parametrize('msg, needle', [
    (_cloud([('x', 0, 7, 1), ('y', 2, 7, 1)]), "'x' and 'y' overlap"),
    (_cloud([('x', 0, 7, 2), ('y', 4, 7, 1)]), "'x' and 'y' overlap"),
    (_cloud([('x', 0, 7, 1), ('y', 14, 7, 1)]), "'y'.*outside"),
    (_cloud([('x', 0, 8, 3)]), "'x'.*outside"),
    (_cloud([('x', 0, 9, 1)]), 'unknown datatype 9'),
    (_cloud([('x', 0, 0, 1)]), 'unknown datatype 0'),
    (_cloud([('x', 0, 7, 0)]), 'count 0'),
    (_cloud([('x', 0, 7, 1), ('x', 4, 7, 1)]), 'twice'),
    (_cloud([('x', 0, 7, 1)], row_step=24), 'exceeds row_step'),
    (_cloud([('x', 0, 7, 1)], height=2, data_len=40), 'fewer than height \\* row_step'),
    (_cloud([], point_step=0, row_step=0), 'point_step is 0'),
])
def test_bad_clouds_raise_value_error(msg, needle):
    with pytest.raises(ValueError, match=needle):
        pointcloud2_to_array(msg)


def test_unknown_requested_field_lists_the_available_ones():
    with pytest.raises(ValueError, match=r"no field\(s\) \['w'\].*\['x'\]"):
        pointcloud2_to_array(_cloud([('x', 0, 7, 1)]), fields=['w'])


@pytest.mark.parametrize('array, needle', [
    (np.zeros(3, np.float32), 'structured'),
    (np.zeros((2, 2, 2), [('x', 'f4')]), '1-D or 2-D'),
    (np.zeros(3, [('x', 'i8')]), "'x'.*cannot carry"),
    (np.zeros(3, [('x', 'f4'), ('ok', '?')]), "'ok'.*cannot carry"),
    (np.zeros(3, [('x', 'f4'), ('n', [('a', 'f4')])]), "'n'.*cannot carry"),
])
def test_array_to_pointcloud2_validates(array, needle):
    with pytest.raises(ValueError, match=needle):
        array_to_pointcloud2(array)


def test_empty_clouds():
    assert pointcloud2_to_array(PointCloud2()).shape == (0, 0)  # height 0, width 0
    out = pointcloud2_to_array(_cloud([('x', 0, 7, 1)], width=0, data_len=0))
    assert out.shape == (0,) and out.dtype.names == ('x',)


# ----------------------------------------------------------------------------- camera info


def _camera_info(cls, k, d, r, p, upper=False):
    """CameraInfo of rclpy, rosbags ROS 2 (k, d, r, p) or rosbags ROS 1 (K, D, R, P)."""
    names = ('K', 'D', 'R', 'P') if upper else ('k', 'd', 'r', 'p')
    matrices = dict(zip(names, (k, d, r, p), strict=True))
    common = dict(width=640, height=480, distortion_model='plumb_bob')
    if cls is CameraInfo:
        return CameraInfo(**{n: v.tolist() for n, v in matrices.items()}, **common)
    store = get_typestore(Stores.ROS1_NOETIC) if upper else TYPESTORE
    stamp = store.types['builtin_interfaces/msg/Time'](sec=0, nanosec=0)
    header_cls = store.types['std_msgs/msg/Header']
    header = (header_cls(seq=0, stamp=stamp, frame_id='') if upper
              else header_cls(stamp=stamp, frame_id=''))
    roi = store.types['sensor_msgs/msg/RegionOfInterest'](0, 0, 0, 0, False)
    return cls(header=header, binning_x=0, binning_y=0, roi=roi, **matrices, **common)


@pytest.mark.parametrize('family', ['rclpy', 'rosbags-ros2', 'rosbags-ros1'])
@MEDIUM
@given(k=hnp.arrays(np.float64, 9, elements=st.floats(-1e4, 1e4)),
       d=hnp.arrays(np.float64, st.integers(0, 8), elements=st.floats(-1, 1)),
       r=hnp.arrays(np.float64, 9, elements=st.floats(-1, 1)),
       p=hnp.arrays(np.float64, 12, elements=st.floats(-1e4, 1e4)))
def test_camera_info_to_intrinsics(family, k, d, r, p):
    cls = {'rclpy': CameraInfo,
           'rosbags-ros2': TYPESTORE.types['sensor_msgs/msg/CameraInfo'],
           'rosbags-ros1': get_typestore(Stores.ROS1_NOETIC).types['sensor_msgs/msg/CameraInfo'],
           }[family]
    intr = camera_info_to_intrinsics(_camera_info(cls, k, d, r, p, upper=family.endswith('1')))
    assert (intr.width, intr.height, intr.distortion_model) == (640, 480, 'plumb_bob')
    assert intr.K.shape == (3, 3) and np.array_equal(intr.K.ravel(), k)
    assert intr.D.dtype == np.float64 and np.array_equal(intr.D, d)
    assert np.array_equal(intr.R, r.reshape(3, 3) if r.any() else np.eye(3))
    if p.any():
        assert intr.P.shape == (3, 4) and np.array_equal(intr.P.ravel(), p)
    else:
        assert intr.P is None


def test_camera_info_all_zero_p_is_none_and_values_are_copies():
    msg = CameraInfo(width=4, height=3, k=[2.0, 0, 1, 0, 2, 1, 0, 0, 1])
    intr = camera_info_to_intrinsics(msg)
    assert intr.P is None and np.array_equal(intr.R, np.eye(3)) and intr.D.shape == (0,)
    msg.k[0] = 99.0
    assert intr.K[0, 0] == 2.0
