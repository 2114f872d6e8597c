"""Console entry points whose implementation has not landed yet.

Each one fails loudly (exit code 2, one line on stderr) instead of doing nothing, so a launch
file or script that depends on it stops with a clear reason.
"""

import sys

NOT_BUILT = {
    'perception_node': 'issue "Perception node, launch, bringup and the demo"',
    'robotseg_node': 'issue "RobotSeg"',
    'rmseg-bringup': 'issue "Perception node, launch, bringup and the demo"',
}


def _not_built(name: str) -> int:
    sys.stderr.write(f'{name}: not built yet ({NOT_BUILT[name]} has not landed)\n')
    return 2


def perception_node() -> int:
    return _not_built('perception_node')


def robotseg_node() -> int:
    return _not_built('robotseg_node')


def bringup() -> int:
    return _not_built('rmseg-bringup')
