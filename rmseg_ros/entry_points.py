"""Console entry points whose implementation has not landed yet.

Each one fails loudly (exit code 2, one line on stderr) instead of doing nothing, so a launch
file or script that depends on it stops with a clear reason.
"""

import sys

NOT_BUILT = {
    'robotseg_node': 'issue "RobotSeg"',
}


def _not_built(name: str) -> int:
    sys.stderr.write(f'{name}: not built yet ({NOT_BUILT[name]} has not landed)\n')
    return 2


def robotseg_node() -> int:
    return _not_built('robotseg_node')

