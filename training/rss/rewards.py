"""Rewards of RSS: pixel-level (1 for the true class) and image-level (one score per sampled map).

Image-level reward functions are pluggable: `reward(actions, batch) -> (B, G)` for (B, G, h, w)
action maps and the training batch. Built in:
- `miou`: the mIoU of a sampled map against the labels (resized nearest to the map's size), per
  map, with the project's convention (training.evaluate): IoU = TP / (TP + FP + FN) over the
  classes present in that map's ground truth or prediction; label 255 ignored. The paper's
  default image-level reward.
- `accuracy`: the fraction of labelled pixels the map gets right (another global score).
- `bag`: a score recorded per frame in the source bag (std_msgs/msg/Float32 on a feedback topic,
  e.g. an operator's rating or a task-success signal), matched to each sample by time stamp.
  A recorded score rates the frame, not the sampled map: every map of one image gets the same
  reward, so with per-image groups (GRPO) its advantages are zero. Use it with `group: batch`,
  where frames are compared with each other (the better-rated frames' sampled maps are
  reinforced), or record one score per candidate map.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .advantages import resize_labels

log = logging.getLogger('rmseg-train.rss')

IGNORE = 255
FEEDBACK_TYPE = 'std_msgs/msg/Float32'

RewardFn = Callable[[torch.Tensor, dict], torch.Tensor]


def pixel_rewards(actions: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N, H, W) actions, (B, H, W) labels -> rewards (1.0 for the true class, else 0.0) and
    the (B, 1, H, W) mask of labelled pixels."""
    lab = labels[:, None]
    return (actions == lab).to(torch.float32), lab != ignore_index


def map_confusions(actions: torch.Tensor, labels: torch.Tensor, num_classes: int,
                   ignore_index: int = IGNORE) -> torch.Tensor:
    """(B, G, h, w) maps and (B, H, W) labels -> (B, G, K, K) confusion matrices (rows: truth)."""
    b, g, h, w = actions.shape
    k = num_classes
    lab = resize_labels(labels, (h, w))[:, None].expand(b, g, h, w)
    valid = (lab != ignore_index) & (lab >= 0) & (lab < k)
    map_id = torch.arange(b * g, device=actions.device).view(b, g, 1, 1).expand(b, g, h, w)
    idx = (map_id * k + lab) * k + actions
    counts = torch.bincount(idx[valid].flatten(), minlength=b * g * k * k)
    return counts.view(b, g, k, k)


def miou_reward(actions: torch.Tensor, labels: torch.Tensor, num_classes: int,
                ignore_index: int = IGNORE) -> torch.Tensor:
    """mIoU of every sampled map (B, G); 0 for a map without labelled pixels."""
    cm = map_confusions(actions, labels, num_classes, ignore_index).to(torch.float64)
    tp = cm.diagonal(dim1=-2, dim2=-1)
    denom = cm.sum(-1) + cm.sum(-2) - tp
    present = denom > 0
    iou = torch.where(present, tp / denom.clamp_min(1.0), torch.zeros_like(tp))
    n = present.sum(-1)
    return torch.where(n > 0, iou.sum(-1) / n.clamp_min(1), torch.zeros_like(n, dtype=iou.dtype)
                       ).to(torch.float32)


def accuracy_reward(actions: torch.Tensor, labels: torch.Tensor, num_classes: int,
                    ignore_index: int = IGNORE) -> torch.Tensor:
    cm = map_confusions(actions, labels, num_classes, ignore_index).to(torch.float64)
    total = cm.sum((-1, -2))
    return (cm.diagonal(dim1=-2, dim2=-1).sum(-1) / total.clamp_min(1.0)).to(torch.float32)


# ----------------------------------------------------------------------------- recorded feedback

def read_feedback(bag: str | Path, topic: str) -> tuple[np.ndarray, np.ndarray]:
    """(stamps ns, scores) of a Float32 feedback topic in a rosbag2 bag, sorted by stamp.

    std_msgs/Float32 has no header: the stamp is the record's log time, which a recorder sets to
    the time the score was received (bag_writer writes the frame's stamp there)."""
    from rmseg_ros.bag_recovery import open_any_reader  # truncated / damaged mcap

    want = topic.lstrip('/')
    stamps, scores = [], []
    with open_any_reader(bag) as reader:
        conns = [c for c in reader.connections if c.topic.lstrip('/') == want]
        if not conns:
            raise KeyError(f'{bag}: no topic {topic!r} (topics: '
                           f'{sorted({c.topic for c in reader.connections})})')
        for conn in conns:
            if conn.msgtype != FEEDBACK_TYPE:
                raise TypeError(f'{bag}: {topic} is {conn.msgtype}, expected {FEEDBACK_TYPE}')
        for conn, t_ns, raw in reader.messages(connections=conns):
            stamps.append(int(t_ns))
            scores.append(float(reader.deserialize(raw, conn.msgtype).data))
    order = np.argsort(stamps, kind='stable')
    return np.asarray(stamps, np.int64)[order], np.asarray(scores, np.float64)[order]


def match_scores(sample_stamps: np.ndarray, stamps: np.ndarray, scores: np.ndarray,
                 tolerance_ns: int) -> np.ndarray:
    """Score of the nearest feedback record to each sample stamp; NaN beyond the tolerance."""
    out = np.full(len(sample_stamps), np.nan)
    if len(stamps) == 0:
        return out
    pos = np.clip(np.searchsorted(stamps, sample_stamps), 1, max(1, len(stamps) - 1))
    left = stamps[np.clip(pos - 1, 0, len(stamps) - 1)]
    right = stamps[np.clip(pos, 0, len(stamps) - 1)]
    take_left = np.abs(sample_stamps - left) <= np.abs(right - sample_stamps)
    nearest = np.where(take_left, pos - 1, pos).clip(0, len(stamps) - 1)
    ok = np.abs(stamps[nearest] - sample_stamps) <= tolerance_ns
    out[ok] = scores[nearest[ok]]
    return out


class BagFeedbackReward:
    """Image-level reward read from a recorded feedback topic of each shard's source bag.

    `dataset` is the training ShardDataset: a batch's `index` entries are its positions, which
    lead to (shard, row) and so to the row's stamp and the shard's source bag (meta['bag'])."""

    def __init__(self, dataset, topic: str, tolerance_ns: int = 50_000_000,
                 bag_root: str | Path | None = None) -> None:
        self.topic = topic
        per_shard = []
        for shard in dataset.shards:
            bag = Path(shard.meta.get('bag', ''))
            if bag_root is not None and not bag.is_absolute():
                bag = Path(bag_root) / bag
            if not bag.exists():
                raise FileNotFoundError(f'{shard.path}: source bag {bag} not found (meta.bag)')
            stamps, scores = read_feedback(bag, topic)
            per_shard.append(match_scores(np.asarray(shard.arrays['stamps'], np.int64),
                                          stamps, scores, tolerance_ns))
        self.scores = np.array([per_shard[si][i] for si, i in dataset.index], dtype=np.float64)
        missing = int(np.isnan(self.scores).sum())
        if missing:
            raise ValueError(f'{missing} of {len(self.scores)} samples have no {topic} score '
                             f'within {tolerance_ns / 1e6:.0f} ms')

    def __call__(self, actions: torch.Tensor, batch: dict) -> torch.Tensor:
        idx = batch['index'].detach().cpu().numpy()
        s = torch.as_tensor(self.scores[idx], dtype=torch.float32, device=actions.device)
        return s[:, None].expand(actions.shape[0], actions.shape[1])


def reward_labels(actions: torch.Tensor, batch: dict) -> torch.Tensor:
    """The labels a map is scored against: the training-resolution `labels`, or the full
    `labels_full` (the cache's resolution) when the map is larger than `labels`."""
    labels = batch['labels']
    full = batch.get('labels_full')
    if full is not None and actions[0, 0].numel() > labels[0].numel():
        return full
    return labels


def make_reward(name: str, num_classes: int, *, dataset=None, topic: str = 'feedback/score',
                tolerance_ns: int = 50_000_000) -> RewardFn:
    """An image-level reward function by name: miou | accuracy | bag."""
    if name == 'miou':
        return lambda actions, batch: miou_reward(actions, reward_labels(actions, batch),
                                                  num_classes)
    if name == 'accuracy':
        return lambda actions, batch: accuracy_reward(actions, reward_labels(actions, batch),
                                                      num_classes)
    if name == 'bag':
        if dataset is None:
            raise ValueError('the bag reward needs the training dataset')
        return BagFeedbackReward(dataset, topic, tolerance_ns)
    raise ValueError(f'unknown reward {name!r} (miou, accuracy, bag)')
