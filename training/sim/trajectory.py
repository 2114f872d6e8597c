"""Smooth motions: robot joint trajectories and the sensor rig's (camera + LiDAR) path.

Joint trajectories pass through random waypoints near a robot's home pose with minimum-jerk
segments (zero velocity and acceleration at waypoints), so motion looks like a robot's and the
velocities published in JointState are exact derivatives. Waypoints whose segment would hit the
table, objects or the space around the camera are redrawn (self-collisions are not checked:
the waypoints stay near a collision-free home pose). The camera orbits the arm's workspace with
slow sinusoids in azimuth, elevation and distance, or stays still.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from training.sim.config import SceneConfig
from training.sim.geometry import look_at_base


def min_jerk(s: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Position fraction and its derivative (per unit s) of a minimum-jerk profile, s in [0, 1]."""
    s = np.clip(s, 0.0, 1.0)
    return s ** 3 * (10 - 15 * s + 6 * s * s), 30 * s * s * (1 - s) ** 2


@dataclass
class JointTrajectory:
    times: np.ndarray  # (K,) seconds from the start, increasing, times[0] = 0
    waypoints: np.ndarray  # (K, J)

    def sample(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """Joint positions and velocities at time t (held at the last waypoint afterwards)."""
        if len(self.times) == 1 or t >= self.times[-1]:
            return self.waypoints[-1].copy(), np.zeros(self.waypoints.shape[1])
        i = int(np.searchsorted(self.times, t, side='right') - 1)
        i = max(i, 0)
        t0, t1 = self.times[i], self.times[i + 1]
        s, ds = min_jerk((t - t0) / (t1 - t0))
        a, b = self.waypoints[i], self.waypoints[i + 1]
        return a + (b - a) * s, (b - a) * ds / (t1 - t0)


def static_trajectory(q: np.ndarray) -> JointTrajectory:
    return JointTrajectory(np.zeros(1), np.asarray(q, dtype=np.float64)[None])


def random_joint_trajectory(rng: np.random.Generator, home: np.ndarray, lower: np.ndarray,
                            upper: np.ndarray, amplitude: float,
                            segment_s: tuple[float, float], duration: float,
                            collides: Callable[[np.ndarray], bool] | None = None,
                            tries: int = 12, checks: int = 4) -> JointTrajectory:
    """Waypoints home + U(-amplitude, amplitude) (clipped to limits) until `duration` is covered.

    Prismatic joints with a small range (grippers) are scaled to their range instead."""
    home = np.asarray(home, dtype=np.float64)
    span = upper - lower
    amp = np.where(span < 0.2, span / 2, amplitude)
    times, points = [0.0], [home.copy()]
    while times[-1] < duration:
        prev = points[-1]
        chosen = prev
        for _ in range(tries):
            cand = np.clip(home + rng.uniform(-1, 1, home.shape) * amp, lower, upper)
            if collides is None or not any(
                    collides(prev + (cand - prev) * s)
                    for s in np.linspace(1.0 / checks, 1.0, checks)):
                chosen = cand
                break
        times.append(times[-1] + float(rng.uniform(*segment_s)))
        points.append(chosen)
    return JointTrajectory(np.array(times), np.array(points))


@dataclass
class CameraTrajectory:
    """Rig pose looking at `target` from spherical coordinates that vary sinusoidally."""

    target: np.ndarray
    distance: float
    azimuth: float
    elevation: float
    amp: np.ndarray  # (4,) azimuth (rad), elevation (rad), distance (fraction), target (m)
    omega: np.ndarray  # (4,) rad/s
    phase: np.ndarray  # (4,)

    def spherical(self, t: float) -> tuple[float, float, float, np.ndarray]:
        w = np.sin(self.omega * t + self.phase) * self.amp
        wobble = w[3] * np.array([np.cos(self.phase[0]), np.sin(self.phase[0]), 0.3])
        return (self.azimuth + w[0], self.elevation + w[1], self.distance * (1 + w[2]),
                self.target + wobble)

    def eye(self, t: float) -> np.ndarray:
        az, el, r, target = self.spherical(t)
        return target + r * np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az),
                                      np.sin(el)])

    def T_world_base(self, t: float) -> np.ndarray:  # noqa: N802
        _, _, _, target = self.spherical(t)
        return look_at_base(self.eye(t), target)

    @property
    def moving(self) -> bool:
        return bool(np.any(self.amp > 0))


def random_camera_trajectory(rng: np.random.Generator, target: np.ndarray,
                             room: tuple[float, float], cfg: SceneConfig, moving: bool,
                             avoid: list[tuple[np.ndarray, np.ndarray]] = (),
                             clearance: float = 0.5) -> CameraTrajectory:
    """A rig path whose eye stays inside the room (0.3 m from walls, below the wall tops) and
    `clearance` metres away from the `avoid` boxes (lo, hi), e.g. the robots' bounding boxes."""
    half = np.array(room) / 2 - 0.3
    traj = None
    for attempt in range(60):
        shrink = 1.0 - attempt / 80  # later attempts come closer
        traj = CameraTrajectory(
            target=np.asarray(target, dtype=np.float64),
            distance=float(rng.uniform(*cfg.camera_distance_m) * shrink),
            azimuth=float(rng.uniform(-np.pi, np.pi)),
            elevation=float(np.deg2rad(rng.uniform(*cfg.camera_elevation_deg))),
            amp=(np.array([rng.uniform(0.15, 0.45), rng.uniform(0.03, 0.12),
                           rng.uniform(0.03, 0.12), rng.uniform(0.0, 0.08)])
                 if moving else np.zeros(4)),
            omega=2 * np.pi / rng.uniform(4.0, 12.0, 4),
            phase=rng.uniform(-np.pi, np.pi, 4),
        )
        if _inside(traj, half, cfg.wall_height_m - 0.2, avoid, clearance):
            return traj
    assert traj is not None
    traj.distance = 0.8
    traj.amp[:] = 0.0
    return traj


def _inside(traj: CameraTrajectory, half: np.ndarray, max_z: float,
            avoid: list[tuple[np.ndarray, np.ndarray]], clearance: float) -> bool:
    """Check the eye over the extremes of every sinusoid (conservative grid)."""
    for s_az in (-1, -0.5, 0, 0.5, 1):
        for s_el in (-1, 0, 1):
            for s_r in (-1, 1):
                for s_t in (-1, 1):
                    az = traj.azimuth + s_az * traj.amp[0]
                    el = traj.elevation + s_el * traj.amp[1]
                    r = traj.distance * (1 + s_r * traj.amp[2])
                    c = traj.target + s_t * traj.amp[3] * np.ones(3)
                    eye = c + r * np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az),
                                            np.sin(el)])
                    if np.any(np.abs(eye[:2]) > half) or eye[2] > max_z or eye[2] < 0.3:
                        return False
                    for lo, hi in avoid:
                        if np.linalg.norm(eye - np.clip(eye, lo, hi)) < clearance:
                            return False
    return True
