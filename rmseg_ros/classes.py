"""The class table (config/classes.yaml): names, colours, ignore index.

Every checkpoint carries its class list; nodes compare it with this table and refuse a mismatch.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rmseg_ros.config import config_path, load_yaml


def check_same_classes(checkpoint: Iterable[str], configured: Iterable[str],
                       where: str = '') -> None:
    """A checkpoint trained for other classes than the configured table is refused (one rule for
    the Segmenter at load and the perception pipeline)."""
    if list(checkpoint) != list(configured):
        raise ValueError(f'{where + ": " if where else ""}checkpoint classes {list(checkpoint)} '
                         f'disagree with the configured classes {list(configured)}')


@dataclass(frozen=True)
class ClassTable:
    names: tuple[str, ...]
    colors: np.ndarray  # (N, 3) uint8 RGB
    ignore_index: int = 255

    @classmethod
    def load(cls, path: str | Path | None = None) -> ClassTable:
        data = load_yaml(path or config_path('classes.yaml'))
        entries = sorted(data['classes'], key=lambda c: c['id'])
        ids = [c['id'] for c in entries]
        if ids != list(range(len(ids))):
            raise ValueError(f'class ids must be 0..N-1 without gaps, got {ids}')
        ignore = int(data.get('ignore_index', 255))
        if ignore < len(ids):
            raise ValueError(f'ignore_index {ignore} collides with a class id')
        colors = np.array([c['color'] for c in entries], dtype=np.uint8).reshape(-1, 3)
        return cls(tuple(c['name'] for c in entries), colors, ignore)

    def __len__(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        return self.names.index(name)

    def palette(self) -> np.ndarray:
        """(256, 3) uint8 lookup table: class colours, black for unknown ids and ignore."""
        lut = np.zeros((256, 3), dtype=np.uint8)
        lut[: len(self.names)] = self.colors
        return lut

    def class_map(self) -> list[tuple[int, str]]:
        """(id, name) for every class: vision_msgs/LabelInfo's class_map."""
        return list(enumerate(self.names))

    def to_json(self, threshold: float = 0.0) -> str:
        """The table as JSON (ids, names, RGB colours, ignore index, confidence threshold): the
        latched `~/class_table` string, readable without vision_msgs."""
        return json.dumps({
            'classes': [{'id': i, 'name': n, 'color': [int(v) for v in self.colors[i]]}
                        for i, n in self.class_map()],
            'ignore_index': self.ignore_index, 'threshold': float(threshold)})
