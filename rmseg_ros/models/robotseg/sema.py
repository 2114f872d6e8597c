"""SEMA, the structure-enhanced memory associator of RobotSeg.

A robot is a chain of rigid links whose outline stays coherent while it moves, and the image's
edges show that outline even where colour does not separate the robot from the background. SEMA
turns the frame's Canny edges into structure tokens, lets them attend to the memory of past
frames (where was the robot's structure before), and turns the result into a structure map
S_t in [0, 1] that modulates the memory-conditioned features F'_t:

    F''_t = F'_t * (1 + alpha * S_t)

so features on structure the memory recognises are amplified and the rest pass unchanged.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import nn
from torch.nn import functional

from .layers import Attention, ConvBNAct


def _grey_quantiles(grey: np.ndarray, qs: tuple[float, ...]) -> list[float]:
    """Quantiles of a uint8 image from its histogram (much cheaper than np.percentile)."""
    cdf = np.cumsum(np.bincount(grey.ravel(), minlength=256)) / grey.size
    return [float(np.searchsorted(cdf, q)) for q in qs]


def canny_edges(rgb: np.ndarray, sigma: float = 0.33) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) uint8 edge map in {0, 1}.

    The grey image is contrast-stretched (2nd-98th percentile) and the Canny thresholds follow
    its median ((1 -/+ sigma) * median), so a dark frame yields the same edges as a bright one.
    """
    grey = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    lo, hi = _grey_quantiles(grey, (0.02, 0.98))
    if hi - lo >= 1:
        lut = np.clip((np.arange(256, dtype=np.float32) - lo) * (255.0 / (hi - lo)), 0, 255)
        grey = cv2.LUT(grey, lut.astype(np.uint8))
    med = _grey_quantiles(grey, (0.5,))[0]
    t1, t2 = max(0.0, (1 - sigma) * med), min(255.0, (1 + sigma) * med)
    if t2 - t1 < 1:
        t1, t2 = 50.0, 150.0
    edges = cv2.Canny(grey, t1, t2)
    return (edges > 0).view(np.uint8) if edges.dtype == np.uint8 else (edges > 0).astype(
        np.uint8)


def sema_modulate(features: torch.Tensor, structure: torch.Tensor, alpha: torch.Tensor | float
                  ) -> torch.Tensor:
    """F'' = F' * (1 + alpha * S) (element-wise; S broadcasts over F')."""
    return features * (1 + alpha * structure)


class SEMA(nn.Module):
    """Edges + memory -> structure map S_t -> modulated features."""

    def __init__(self, dim: int, memory_dim: int, heads: int, alpha: float,
                 learnable_alpha: bool = True) -> None:
        super().__init__()
        self.edge_enc = nn.Sequential(ConvBNAct(1, 16, 3, 2), ConvBNAct(16, dim, 3, 2,
                                                                        act=False))
        self.norm_f = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, memory_dim)
        self.norm_s = nn.LayerNorm(dim)
        self.to_s = nn.Linear(dim, dim)
        a = torch.tensor(float(alpha))
        if learnable_alpha:
            self.alpha = nn.Parameter(a)
        else:
            self.register_buffer('alpha', a)

    def structure_map(self, features: torch.Tensor, edges: torch.Tensor, pos: torch.Tensor,
                      mem: torch.Tensor | None, mem_key: torch.Tensor | None) -> torch.Tensor:
        """features (B, N, C) tokens of an (h, w) grid, edges (B, 1, H, W) in {0, 1}
        -> S_t (B, N, C) in [0, 1]."""
        e = functional.avg_pool2d(edges, 4, 4, ceil_mode=True)
        s = self.edge_enc(e)
        s = s.flatten(2).transpose(1, 2)
        if s.shape[1] != features.shape[1]:
            raise ValueError(f'edge grid has {s.shape[1]} tokens, features {features.shape[1]}:'
                             ' edges must have the input image size')
        q = s + self.norm_f(features)
        if mem is not None:
            q = q + self.attn(q + pos, mem_key, mem)
        return torch.sigmoid(self.to_s(self.norm_s(q)))

    def forward(self, features: torch.Tensor, edges: torch.Tensor, pos: torch.Tensor,
                mem: torch.Tensor | None, mem_key: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.structure_map(features, edges, pos, mem, mem_key)
        return sema_modulate(features, s, self.alpha), s
