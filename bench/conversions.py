"""Median time of the message <-> numpy conversions the nodes run on every frame.

Prints, one per line (DESIGN.md section 7):
  image_to_numpy_ms: <v> ms     640x480 rgb8 Image (as received: array.array data) -> ndarray
  numpy_to_image_ms: <v> ms     640x480x3 uint8 -> sensor_msgs/Image (rclpy)
  cloud_to_array_ms: <v> ms     65536-point x,y,z,intensity float32 PointCloud2 -> structured array
  array_to_cloud_ms: <v> ms     that structured array -> sensor_msgs/PointCloud2 (rclpy)
and exits non-zero when a conversion fails or gives a wrong result.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from timing import median_ms


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--repeat', type=int, default=50,
                        help='timed repetitions per conversion; the median is printed')
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error('--repeat must be >= 1')
    try:
        from rclpy.serialization import deserialize_message, serialize_message
        from sensor_msgs.msg import Image, PointCloud2

        from rmseg_ros.conversions import (
            array_to_pointcloud2,
            image_to_numpy,
            numpy_to_image,
            pointcloud2_to_array,
        )
    except ImportError as err:
        print(f'cannot measure: {err}', file=sys.stderr)
        return 1

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    cloud = np.zeros(65536, dtype=[('x', 'f4'), ('y', 'f4'), ('z', 'f4'), ('intensity', 'f4')])
    for name in cloud.dtype.names:
        cloud[name] = rng.normal(size=cloud.size)
    # Messages as a subscriber gets them: deserialised, data in an array.array.
    image_msg = deserialize_message(serialize_message(numpy_to_image(rgb, 'rgb8')), Image)
    cloud_msg = deserialize_message(serialize_message(array_to_pointcloud2(cloud)), PointCloud2)

    checks = {
        'image_to_numpy': np.array_equal(image_to_numpy(image_msg), rgb),
        'numpy_to_image': bytes(numpy_to_image(rgb, 'rgb8').data) == rgb.tobytes(),
        'cloud_to_array': np.array_equal(pointcloud2_to_array(cloud_msg), cloud),
        'array_to_cloud': bytes(array_to_pointcloud2(cloud).data) == cloud.tobytes(),
    }
    wrong = [name for name, ok in checks.items() if not ok]
    if wrong:
        print(f'cannot measure: wrong results from {wrong}', file=sys.stderr)
        return 1

    figures = {
        'image_to_numpy_ms': median_ms(lambda: image_to_numpy(image_msg), args.repeat),
        'numpy_to_image_ms': median_ms(lambda: numpy_to_image(rgb, 'rgb8'), args.repeat),
        'cloud_to_array_ms': median_ms(lambda: pointcloud2_to_array(cloud_msg), args.repeat),
        'array_to_cloud_ms': median_ms(lambda: array_to_pointcloud2(cloud), args.repeat),
    }
    for name, value in figures.items():
        print(f'{name}: {value:.3f} ms')
    return 0


if __name__ == '__main__':
    sys.exit(main())
