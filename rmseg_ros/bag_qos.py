"""The offered QoS that rosbag2 stores for latched topics (/tf_static, class tables), so a replay
re-publishes them reliable and transient-local as the recorder saw them."""

from __future__ import annotations

from rosbags.interfaces import (
    Qos,
    QosDurability,
    QosHistory,
    QosLiveliness,
    QosReliability,
    QosTime,
)

_ZERO = QosTime(sec=0, nsec=0)
LATCHED_QOS = Qos(history=QosHistory.KEEP_LAST, depth=1, reliability=QosReliability.RELIABLE,
                  durability=QosDurability.TRANSIENT_LOCAL, deadline=_ZERO, lifespan=_ZERO,
                  liveliness=QosLiveliness.AUTOMATIC, liveliness_lease_duration=_ZERO,
                  avoid_ros_namespace_conventions=False)
