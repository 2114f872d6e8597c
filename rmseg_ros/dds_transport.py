"""Which Fast DDS transport a process that moves camera-sized images uses.

Fast DDS's shared-memory segment defaults to 512 KiB: a 640x480 rgb8 frame does not fit, so it
goes over UDP (best effort lost ~40% of frames at 30 Hz here) or TCP with LARGE_DATA (p50 18 ms
per frame between two idle processes). `config/fastdds_shm.xml` enlarges the segment (p50 6 ms,
no loss). Fast DDS reads the variables once per process, at its first participant, so they are
set in the environment of the processes a tool starts, or in `os.environ` before `rclpy.init`.
"""

from __future__ import annotations

from collections.abc import Mapping

from rmseg_ros.config import config_path

PROFILE_VAR = 'FASTDDS_DEFAULT_PROFILES_FILE'
BUILTIN_VAR = 'FASTDDS_BUILTIN_TRANSPORTS'
SHM_PROFILE = 'fastdds_shm.xml'
# 'shm': the package profile; 'inherit': the caller's environment as it is; the rest are
# Fast DDS built-in transport sets (FASTDDS_BUILTIN_TRANSPORTS)
CHOICES = ('shm', 'inherit', 'LARGE_DATA', 'DEFAULT', 'SHM', 'UDPv4')


def transport_env(env: Mapping[str, str], transport: str) -> dict[str, str]:
    """A copy of `env` set up for `transport` (one of CHOICES).

    'shm' leaves an environment that already names a profile file as it is (the user's XML may
    configure more than the transport) and otherwise points Fast DDS at the package's profile; a
    built-in set drops any profile file, since a profile's own transports take precedence over
    the built-in variable (measured: with both set, the profile's shared memory was used).
    """
    if transport not in CHOICES:
        raise ValueError(f'unknown DDS transport {transport!r}; choose one of {", ".join(CHOICES)}')
    out = dict(env)
    if transport == 'inherit':
        return out
    if transport == 'shm':
        if not out.get(PROFILE_VAR):
            out[PROFILE_VAR] = str(config_path(SHM_PROFILE))
            out.pop(BUILTIN_VAR, None)
        return out
    out.pop(PROFILE_VAR, None)
    out[BUILTIN_VAR] = transport
    return out


def env_changes(base: Mapping[str, str],
                target: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """(variables to set, variables to unset) turning `base` into `target`.

    Why both: a launcher that can only add variables (launch_ros `additional_env`) would leave a
    FASTDDS_BUILTIN_TRANSPORTS from the caller next to the profile; the unset list says what it
    must remove too.
    """
    added = {k: v for k, v in target.items() if base.get(k) != v}
    return added, sorted(k for k in base if k not in target)
