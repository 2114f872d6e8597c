"""A spinning multi-beam LiDAR by ray casting (pybullet rayTestBatch against collision shapes).

Output is an organised scan (beams x columns) in the LiDAR's own frame (x forward, y left, z up):
row 0 is the highest beam, column c has azimuth pi - 2 pi (c + 0.5) / columns (from behind on
the left, sweeping clockwise seen from above, like common spinning sensors). Rays that hit nothing
within range give NaN points. Intensity models a diffuse surface: the hit body's reflectivity
times the cosine of the incidence angle, in [0, 1]. The whole scan is taken at one instant
(no motion distortion).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pybullet as p

from training.sim.config import LidarConfig
from training.sim.scene import Scene

_BATCH = 16384  # pybullet's limit of rays per rayTestBatch call


@dataclass
class LidarScan:
    xyz: np.ndarray  # (B, C, 3) float32 in the LiDAR frame, NaN where no return
    intensity: np.ndarray  # (B, C) float32 in [0, 1], NaN where no return
    body: np.ndarray  # (B, C) int32 pybullet body id hit, -1 for no return


class Lidar:
    def __init__(self, cfg: LidarConfig) -> None:
        self.cfg = cfg
        lo, hi = np.deg2rad(cfg.vfov_deg[0]), np.deg2rad(cfg.vfov_deg[1])
        elev = np.linspace(hi, lo, cfg.beams) if cfg.beams > 1 else np.array([(lo + hi) / 2])
        az = np.pi - 2 * np.pi * (np.arange(cfg.columns) + 0.5) / cfg.columns
        e, a = np.meshgrid(elev, az, indexing='ij')
        self.directions = np.stack(
            [np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)], axis=-1)  # (B, C, 3)
        self.elevation, self.azimuth = elev, az

    def scan(self, scene: Scene, T_world_lidar: np.ndarray) -> LidarScan:
        cfg = self.cfg
        B, C = cfg.beams, cfg.columns
        R, t = T_world_lidar[:3, :3], T_world_lidar[:3, 3]
        dirs = self.directions.reshape(-1, 3) @ R.T  # world
        starts = t + dirs * cfg.min_range_m
        ends = t + dirs * cfg.max_range_m
        hits = []
        for i in range(0, dirs.shape[0], _BATCH):
            hits.extend(p.rayTestBatch(starts[i:i + _BATCH], ends[i:i + _BATCH],
                                       numThreads=cfg.threads, physicsClientId=scene.client))
        body = np.fromiter((h[0] for h in hits), dtype=np.int32, count=len(hits))
        frac = np.fromiter((h[2] for h in hits), dtype=np.float64, count=len(hits))
        normal = np.array([h[4] for h in hits], dtype=np.float64)
        hit = body >= 0
        rng = cfg.min_range_m + frac * (cfg.max_range_m - cfg.min_range_m)
        local = self.directions.reshape(-1, 3) * rng[:, None]  # exact in the LiDAR frame
        cos_inc = np.abs(np.einsum('ij,ij->i', normal, dirs))
        refl = scene.reflectivity_lut()
        inten = refl[np.clip(body + 1, 0, refl.size - 1)] * cos_inc
        local[~hit] = np.nan
        inten = np.where(hit, inten, np.nan)
        return LidarScan(local.reshape(B, C, 3).astype(np.float32),
                         inten.reshape(B, C).astype(np.float32),
                         np.where(hit, body, -1).reshape(B, C))
