"""RobotSeg: prompt-free video segmentation of robots (SAM 2 layout sized for a CPU).

See model.py for the per-frame data flow; sema.py and rpg.py for the two RobotSeg additions.
"""

from .config import RobotSegConfig
from .memory import MemoryBank, MemoryEntry
from .model import (
    ARCH,
    FrameOutput,
    RobotSegModel,
    RobotSegTracker,
    load_robotseg,
    prepare_frame,
    resolve_device,
    save_robotseg,
)
from .rpg import cluster_tokens
from .sema import canny_edges, sema_modulate

__all__ = ['ARCH', 'FrameOutput', 'MemoryBank', 'MemoryEntry', 'RobotSegConfig', 'RobotSegModel',
           'RobotSegTracker', 'canny_edges', 'cluster_tokens', 'load_robotseg', 'prepare_frame',
           'resolve_device', 'save_robotseg', 'sema_modulate']
