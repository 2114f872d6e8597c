"""Robot videos from rosbag2 recordings: frames + robot masks, cached, and training windows.

A video is the camera stream of one recording with its robot-mask topic (mono8, non-zero =
robot), matched by header stamp. Training cuts each video into clips of `clip_length`
consecutive frames; in the first-frame setting only frame 0 of each clip carries a label, and a
training sample is a window of that frame plus `window - 1` later frames of the same clip (in
order), so no label of a later frame is ever read.
"""

from __future__ import annotations

import glob
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from rmseg_ros import conversions
from rmseg_ros.atomic_files import atomic_write
from rmseg_ros.models.robotseg import prepare_frame

from .config import AugmentConfig, DataConfig

log = logging.getLogger(__name__)


@dataclass
class Video:
    name: str
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    masks: np.ndarray  # (T, H, W) uint8 {0, 1}
    stamps: np.ndarray  # (T,) int64 ns


def bag_dirs(patterns: list[str]) -> list[Path]:
    """rosbag2 directories (holding metadata.yaml) matched by glob patterns, sorted."""
    found = {Path(p) for pat in patterns for p in glob.glob(str(pat), recursive=True)
             if (Path(p) / 'metadata.yaml').exists()}
    return sorted(found)


def mask_png_dir(bag: str | Path, mask_dir: str) -> Path:
    """Where `rmseg-train robot-masks --label-dir mask_dir` wrote the masks of `bag`."""
    return Path(bag) / mask_dir / 'robot'


def read_mask_pngs(directory: Path, hw: tuple[int, int]) -> dict[int, np.ndarray]:
    """stamp_ns -> {0, 1} mask resized to hw, from <stamp_ns>.png files."""
    masks: dict[int, np.ndarray] = {}
    for path in sorted(directory.glob('*.png')):
        if not path.stem.isdigit():
            continue
        m = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if m is None:
            raise ValueError(f'{path}: not a readable PNG')
        masks[int(path.stem)] = cv2.resize((m > 0).astype(np.uint8), (hw[1], hw[0]),
                                           interpolation=cv2.INTER_NEAREST)
    return masks


def read_video(bag: str | Path, hw: tuple[int, int], rgb_topic: str = 'camera/image',
               robot_topic: str = 'labels/robot', mask_dir: str = '') -> Video:
    """Camera frames that have a robot mask with the same stamp, resized to hw. The masks come
    from `robot_topic`, or with `mask_dir` from the PNGs of `mask_png_dir(bag, mask_dir)`
    (kinematic masks rendered by `rmseg-train robot-masks`)."""
    from rmseg_ros.bag_recovery import open_any_reader  # truncated / damaged mcap

    want = {rgb_topic.lstrip('/'): 'rgb'}
    if not mask_dir:
        want[robot_topic.lstrip('/')] = 'mask'
    images: dict[int, np.ndarray] = {}
    masks: dict[int, np.ndarray] = read_mask_pngs(mask_png_dir(bag, mask_dir), hw) \
        if mask_dir else {}
    with open_any_reader(bag) as reader:
        conns = [c for c in reader.connections if c.topic.lstrip('/') in want]
        for conn, _, raw in reader.messages(connections=conns):
            msg = reader.deserialize(raw, conn.msgtype)
            stamp = conversions.stamp_ns(msg)
            if want[conn.topic.lstrip('/')] == 'rgb':
                img = conversions.image_to_rgb(msg)
                images[stamp] = cv2.resize(img, (hw[1], hw[0]), interpolation=cv2.INTER_AREA)
            else:
                m = (conversions.image_to_numpy(msg) > 0).astype(np.uint8)
                masks[stamp] = cv2.resize(m, (hw[1], hw[0]), interpolation=cv2.INTER_NEAREST)
    stamps = sorted(set(images) & set(masks))
    if not stamps:
        source = f'in {mask_png_dir(bag, mask_dir)}' if mask_dir else f'on {robot_topic!r}'
        raise ValueError(f'{bag}: no frame on {rgb_topic!r} has a mask {source}')
    return Video(Path(bag).name, np.stack([images[s] for s in stamps]),
                 np.stack([masks[s] for s in stamps]), np.asarray(stamps, np.int64))


def load_videos(patterns: list[str], data: DataConfig, max_videos: int = 0) -> list[Video]:
    """Videos of every bag matched, through an npz cache keyed by bag, size and topics."""
    bags = bag_dirs(patterns)
    if not bags:
        raise FileNotFoundError(f'no rosbag2 directories match {patterns}; render them with '
                                '`python -m training.robotseg.experiment --data-only`')
    if max_videos > 0:
        bags = bags[:max_videos]
    cache = Path(data.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    videos = []
    for bag in bags:
        files = sorted(str(p.stat().st_size) + p.name for p in bag.iterdir() if p.is_file())
        if data.robot_masks:  # the rendered masks are part of the key: a re-render counts
            files += sorted(f'{p.stat().st_mtime_ns}{p.name}'
                            for p in mask_png_dir(bag, data.robot_masks).glob('*.png'))
        key = hashlib.sha256(repr((str(bag.resolve()), files, data.hw, data.rgb_topic,
                                   data.robot_topic, data.robot_masks)).encode()
                             ).hexdigest()[:16]
        path = cache / f'{bag.name}_{key}.npz'
        if path.exists():
            z = np.load(path)
            videos.append(Video(bag.name, z['frames'], z['masks'], z['stamps']))
            continue
        v = read_video(bag, data.hw, data.rgb_topic, data.robot_topic, data.robot_masks)
        atomic_write(path, lambda f, v=v: np.savez(f, frames=v.frames, masks=v.masks,
                                                   stamps=v.stamps))
        videos.append(v)
    return videos


def photometric(frames: np.ndarray, gain: float, gamma: float,
                tint: tuple[float, float, float] = (1.0, 1.0, 1.0),
                order: tuple[int, int, int] = (0, 1, 2)) -> np.ndarray:
    """The same brightness gain, gamma, per-channel tint and channel order on every frame of a
    window (uint8 in, uint8 out): a light or a robot colour never seen, not a flicker."""
    x = np.arange(256) / 255.0
    lut = np.stack([np.clip(255.0 * gain * t * x ** gamma, 0, 255) for t in tint], 1)
    lut = lut.astype(np.uint8)[:, None, :]  # (256, 1, 3): cv2.LUT per channel
    return np.stack([cv2.LUT(np.ascontiguousarray(f[..., list(order)]), lut) for f in frames])


def log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    """A factor drawn log-uniformly from [lo, hi]: halving the light is as likely as doubling
    it, so a wide gain range reaches dim scenes as often as bright ones."""
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


class ClipDataset(Dataset):
    """Training windows. Keys: images (T,3,H,W), edges (T,1,H,W), masks (T,H,W) float32
    (zeros where unlabelled), labelled (T,) bool, index."""

    def __init__(self, videos: list[Video], clip_length: int, window: int, labels: str,
                 augment: AugmentConfig | None, seed: int = 0, canny_sigma: float = 0.33
                 ) -> None:
        self.videos = videos
        self.clip_length = int(clip_length)
        self.window = int(window)
        self.labels = labels
        self.augment = augment
        self.seed = int(seed)
        self.sigma = canny_sigma
        self.epoch = 0
        self.clips = [(v, s) for v, video in enumerate(videos)
                      for s in range(0, len(video.frames) - self.clip_length + 1,
                                     self.clip_length)]
        if not self.clips:
            raise ValueError(f'no video has {clip_length} frames')

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.clips)

    def labelled_frames(self) -> list[tuple[int, int]]:
        """(video, frame) of every label this dataset can ever hand out."""
        if self.labels == 'all':
            return [(v, s + i) for v, s in self.clips for i in range(self.clip_length)]
        return [(v, s) for v, s in self.clips]

    def window_indices(self, index: int, rng: np.random.Generator) -> list[int]:
        """Frame indices (in the video) of one sample of clip `index`, in time order."""
        start = self.clips[index][1]
        if self.labels == 'all':  # every frame labelled: windows may start anywhere
            offsets = np.sort(rng.choice(self.clip_length, self.window, replace=False))
        else:
            later = rng.choice(np.arange(1, self.clip_length), self.window - 1, replace=False)
            offsets = np.concatenate([[0], np.sort(later)])
        return [start + int(o) for o in offsets]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng((self.seed, self.epoch, index))
        v, _ = self.clips[index]
        video = self.videos[v]
        idx = self.window_indices(index, rng)
        frames, masks = video.frames[idx], video.masks[idx].astype(np.float32)
        labelled = np.ones(len(idx), bool) if self.labels == 'all' else \
            np.arange(len(idx)) == 0
        masks = masks * labelled[:, None, None]  # unlabelled frames carry no information
        aug = self.augment
        if aug is not None:
            if aug.flip and rng.random() < 0.5:
                frames, masks = frames[:, :, ::-1], masks[:, :, ::-1]
            order = tuple(int(i) for i in rng.permutation(3)) \
                if rng.random() < aug.channel_shuffle else (0, 1, 2)
            tint = tuple(float(v) for v in rng.uniform(*aug.tint, size=3))
            frames = photometric(frames, log_uniform(rng, *aug.gain),
                                 float(rng.uniform(*aug.gamma)), tint, order)
        prepared = [prepare_frame(f, None, self.sigma) for f in frames]
        return {
            'images': torch.from_numpy(np.stack([p[0] for p in prepared])),
            'edges': torch.from_numpy(np.stack([p[1] for p in prepared])),
            'masks': torch.from_numpy(np.ascontiguousarray(masks)),
            'labelled': torch.from_numpy(labelled),
            'index': torch.tensor(index),
        }
