"""Baseline: the first frame's true mask carried forward by dense optical flow (Farneback).

For each frame t, the flow from frame t back to frame t-1 says where each pixel of t was; the
previous mask is sampled there (backward warping leaves no holes) and thresholded at 0.5
(`soft: true` carries the unthresholded warped mask from frame to frame instead).
"""

from __future__ import annotations

import cv2
import numpy as np

from .config import FlowConfig


def propagate_mask(frames: np.ndarray, mask0: np.ndarray, cfg: FlowConfig | None = None
                   ) -> list[np.ndarray]:
    """frames (T, H, W, 3) uint8 RGB, mask0 (H, W) -> T masks (uint8 {0, 1}), the first = mask0.

    Frames are contrast-stretched per image before the flow, so dark videos are not at a
    disadvantage against the learned models (which standardise each frame too)."""
    cfg = cfg or FlowConfig()
    h, w = mask0.shape
    grid_x, grid_y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    greys = [cv2.normalize(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), None, 0, 255, cv2.NORM_MINMAX)
             for f in frames]
    soft = mask0.astype(np.float32)
    out = [(soft > 0.5).astype(np.uint8)]
    for t in range(1, len(frames)):
        flow = cv2.calcOpticalFlowFarneback(greys[t], greys[t - 1], None, cfg.pyr_scale,
                                            cfg.levels, cfg.winsize, cfg.iterations, cfg.poly_n,
                                            cfg.poly_sigma, 0)
        soft = cv2.remap(soft, grid_x + flow[..., 0], grid_y + flow[..., 1], cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        out.append((soft > 0.5).astype(np.uint8))
        if not cfg.soft:
            soft = out[-1].astype(np.float32)
    return out
