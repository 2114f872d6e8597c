"""Modality names, their fixed order, presence masks and the 15 non-empty subsets.

The order rgb, depth, lidar, event is part of the data contract (DESIGN.md section 3): presence
masks, checkpoints and evaluation tables all index modalities by it.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import combinations

import numpy as np

MODALITIES: tuple[str, ...] = ('rgb', 'depth', 'lidar', 'event')
INDEX: dict[str, int] = {name: i for i, name in enumerate(MODALITIES)}
SHORT: dict[str, str] = {'rgb': 'R', 'depth': 'D', 'lidar': 'L', 'event': 'E'}


def input_channels(event_bins: int) -> dict[str, int]:
    """Channels of each modality's model tensor (see preprocess.build_model_input)."""
    return {'rgb': 3, 'depth': 2, 'lidar': 3, 'event': event_bins}


def check_names(names: Iterable[str]) -> tuple[str, ...]:
    """Validate modality names, returning them in canonical order."""
    names = set(names)
    unknown = names - set(MODALITIES)
    if unknown:
        raise ValueError(f'unknown modalities {sorted(unknown)}; known: {list(MODALITIES)}')
    return tuple(m for m in MODALITIES if m in names)


def presence_from_names(names: Iterable[str]) -> np.ndarray:
    """bool[4] presence mask in the fixed order from a collection of modality names."""
    present = check_names(names)
    return np.array([m in present for m in MODALITIES], dtype=bool)


def names_from_presence(presence: Iterable[bool]) -> tuple[str, ...]:
    flags = [bool(v) for v in presence]
    if len(flags) != len(MODALITIES):
        raise ValueError(f'presence must have {len(MODALITIES)} entries, got {len(flags)}')
    return tuple(m for m, on in zip(MODALITIES, flags, strict=True) if on)


def subset_name(names: Iterable[str]) -> str:
    """Short name of a subset, e.g. ('rgb', 'lidar') -> 'RL' (used in tables and diagnostics)."""
    return ''.join(SHORT[m] for m in check_names(names))


def all_subsets() -> list[tuple[str, ...]]:
    """The 15 non-empty subsets of the four modalities, smallest first, canonical order inside."""
    return [c for k in range(1, len(MODALITIES) + 1) for c in combinations(MODALITIES, k)]
