"""Drop-tolerant synchronisation of the sensor streams: `core` (the synchroniser, DESIGN.md
section 4) and `failover` (switching the pivot while it is dead). The public names of
`rmseg_ros.sync` (DESIGN.md section 7) are importable from here as before."""

from rmseg_ros.sync.core import (
    NS_PER_S,
    ModalityState,
    ModalitySynchronizer,
    SyncConfig,
    SyncedSet,
)

__all__ = ['NS_PER_S', 'ModalityState', 'ModalitySynchronizer', 'SyncConfig', 'SyncedSet']
