"""Montage PNG of a bag: RGB / depth / LiDAR (projected) / events / labels / robot mask per row.

For looking at what the simulator (or any bag with these topics) recorded:
    python -m training.sim.montage BAG --out montage.png [--frames 4]
The LiDAR column is the cloud projected into the camera with the extrinsic from /tf_static
(rmseg_ros.frontend.lidar_projection), coloured by range; events are drawn ON red / OFF blue.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from rosbags.rosbag2 import Reader

from rmseg_ros import conversions
from rmseg_ros.classes import ClassTable
from rmseg_ros.frontend.lidar_projection import lidar_to_image
from rmseg_ros.transforms import TransformTree
from training.sim.bag_writer import TYPESTORE
from training.sim.config import SimConfig
from training.topics import Topics


def read_messages(path: str | Path, topics: set[str] | None = None
                  ) -> dict[str, list[tuple[int, Any]]]:
    """topic -> [(log time ns, deserialised rosbags message)] in bag order."""
    out: dict[str, list[tuple[int, Any]]] = defaultdict(list)
    with Reader(Path(path)) as reader:
        conns = [c for c in reader.connections if topics is None or c.topic in topics]
        for conn, stamp, raw in reader.messages(connections=conns):
            out[conn.topic].append((stamp, TYPESTORE.deserialize_cdr(raw, conn.msgtype)))
    return dict(out)


def colorize(values: np.ndarray, valid: np.ndarray, vmax: float) -> np.ndarray:
    """Scalar image -> RGB with a turbo colour map; invalid pixels black."""
    v = np.clip(np.nan_to_num(values) / max(vmax, 1e-6), 0, 1)
    rgb = cv2.applyColorMap((v * 255).astype(np.uint8), cv2.COLORMAP_TURBO)[..., ::-1]
    return np.where(valid[..., None], rgb, 0).astype(np.uint8)


def event_image(cloud: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    img = np.full((*hw, 3), 255, np.uint8)
    if cloud.size:
        x, y, pol = cloud['x'].astype(int), cloud['y'].astype(int), cloud['p']
        on = pol > 0
        img[y[on], x[on]] = (220, 30, 30)
        img[y[~on], x[~on]] = (30, 60, 220)
    return img


def _label(img: np.ndarray, text: str) -> np.ndarray:
    out = img.copy()
    cv2.putText(out, text, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 2, cv2.LINE_AA)
    cv2.putText(out, text, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (255, 255, 255), 1,
                cv2.LINE_AA)
    return out


def make_montage(bag: str | Path, frames: int = 4, topics: Topics | None = None,
                 classes: ClassTable | None = None, depth_max: float = 5.0) -> np.ndarray:
    """(rows * H, 6 * W, 3) uint8 montage of `frames` evenly spaced camera frames."""
    t = topics or SimConfig().topics
    classes = classes or ClassTable.load()
    msgs = read_messages(bag)
    by_stamp: dict[str, dict[int, Any]] = {
        key: {conversions.stamp_ns(m): m for _, m in msgs.get(topic, [])}
        for key, topic in (('rgb', t.rgb), ('depth', t.depth), ('lidar', t.lidar),
                           ('events', t.event), ('labels', t.semantic), ('robot', t.robot),
                           ('info', t.camera_info))}
    tree = TransformTree()
    for _, m in msgs.get(t.tf_static, []):
        tree.add_message(m)
    stamps = sorted(by_stamp['info'])
    if not stamps:
        raise ValueError(f'{bag}: no {t.camera_info} messages')
    pick = [stamps[i] for i in np.linspace(0, len(stamps) - 1, min(frames, len(stamps))).astype(
        int)]
    palette = classes.palette()
    rows = []
    for s in pick:
        info = conversions.camera_info_to_intrinsics(by_stamp['info'][s])
        hw = (info.height, info.width)
        blank = np.zeros((*hw, 3), np.uint8)
        cells = []
        rgb = by_stamp['rgb'].get(s)
        cells.append(_label(conversions.image_to_numpy(rgb) if rgb is not None else blank,
                            f'rgb {(s - stamps[0]) * 1e-9:.1f}s'))
        depth = by_stamp['depth'].get(s)
        if depth is not None:
            d = conversions.image_to_numpy(depth)
            cells.append(_label(colorize(d, np.isfinite(d), depth_max), f'depth 0-{depth_max}m'))
        else:
            cells.append(_label(blank, 'depth missing'))
        cloud = by_stamp['lidar'].get(s)
        if cloud is not None:
            arr = conversions.pointcloud2_to_array(cloud).reshape(-1)
            xyz = np.stack([arr['x'], arr['y'], arr['z']], axis=1)
            T = tree.lookup(info_frame(by_stamp['info'][s]), cloud.header.frame_id)
            img = lidar_to_image(xyz, arr['intensity'], T, info, hw)
            cell = colorize(img.depth, img.mask, depth_max)
            cell = cv2.dilate(cell, np.ones((2, 2), np.uint8))
            cells.append(_label(cell, f'lidar {int(img.mask.sum())} px'))
        else:
            cells.append(_label(blank, 'lidar missing'))
        ev = by_stamp['events'].get(s)
        if ev is not None:
            arr = conversions.pointcloud2_to_array(ev).reshape(-1)
            cells.append(_label(event_image(arr, hw), f'events {arr.size}'))
        else:
            cells.append(_label(blank, 'events missing'))
        lab = by_stamp['labels'].get(s)
        cells.append(_label(palette[conversions.image_to_numpy(lab)] if lab is not None
                            else blank, 'labels'))
        rob = by_stamp['robot'].get(s)
        if rob is not None:
            mask = conversions.image_to_numpy(rob)
            base = conversions.image_to_numpy(rgb) if rgb is not None else blank
            over = base.copy()
            over[mask > 0] = (0.4 * over[mask > 0] + 0.6 * np.array([255, 0, 255])).astype(
                np.uint8)
            cells.append(_label(over, f'robot {int((mask > 0).sum())} px'))
        else:
            cells.append(_label(blank, 'robot missing'))
        rows.append(np.concatenate(cells, axis=1))
    return np.concatenate(rows, axis=0)


def info_frame(info: Any) -> str:
    return info.header.frame_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('bag')
    parser.add_argument('--out', required=True, help='PNG path')
    parser.add_argument('--frames', type=int, default=4)
    parser.add_argument('--depth-max', type=float, default=5.0)
    args = parser.parse_args(argv)
    img = make_montage(args.bag, args.frames, depth_max=args.depth_max)
    cv2.imwrite(args.out, img[..., ::-1])
    print(f'wrote {args.out} ({img.shape[1]}x{img.shape[0]})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
