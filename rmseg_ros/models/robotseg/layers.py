"""Building blocks of RobotSeg: convolutions, the image encoder, positional encoding, attention.

Eager CPU at this size is dominated by per-op overhead, so blocks are depthwise-separable
without expansion and normalised with BatchNorm (cheap at inference), as in the fusion model.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional

from rmseg_ros.models.fusion import ConvBN


class ConvBNAct(ConvBN):
    """The fusion network's ConvBN (BN folding included) with RobotSeg's 3x3 default kernel."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1,
                 act: bool = True) -> None:
        super().__init__(cin, cout, k, stride, groups, act)


class DWBlock(nn.Module):
    """Depthwise 3x3 (optionally strided) + pointwise; residual when the shape is kept."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.dw = ConvBNAct(cin, cin, 3, stride, groups=cin, act=False)
        self.pw = ConvBNAct(cin, cout, 1)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pw(self.dw(x))
        return x + y if self.residual else y


class ImageEncoder(nn.Module):
    """RGB -> features at strides 4, 8 and 16 (the last projected to `dim`)."""

    def __init__(self, widths: tuple[int, ...], depths: tuple[int, ...], dim: int) -> None:
        super().__init__()
        w = widths
        self.stem = nn.Sequential(ConvBNAct(3, w[0], 3, 2),
                                  *[DWBlock(w[0], w[0]) for _ in range(depths[0] - 1)])
        self.stages = nn.ModuleList()
        for i in range(1, 4):
            blocks = [DWBlock(w[i - 1], w[i], 2)] + [DWBlock(w[i], w[i])
                                                     for _ in range(depths[i] - 1)]
            self.stages.append(nn.Sequential(*blocks))
        self.proj = nn.Conv2d(w[3], dim, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.stem(x)
        s4 = self.stages[0](x)
        s8 = self.stages[1](s4)
        s16 = self.stages[2](s8)
        return s4, s8, self.proj(s16)


def sine_position_encoding(h: int, w: int, dim: int, device: torch.device | None = None
                           ) -> torch.Tensor:
    """(h*w, dim) fixed 2-D sine/cosine encoding (half the channels for y, half for x)."""
    if dim % 4:
        raise ValueError(f'positional encoding needs dim % 4 == 0, got {dim}')
    quarter = dim // 4
    freq = torch.exp(-math.log(10000.0) * torch.arange(quarter, device=device) / quarter)
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h * 2 * math.pi
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w * 2 * math.pi
    py = ys[:, None] * freq[None] * 8
    px = xs[:, None] * freq[None] * 8
    pe_y = torch.cat([py.sin(), py.cos()], 1)[:, None, :].expand(h, w, 2 * quarter)
    pe_x = torch.cat([px.sin(), px.cos()], 1)[None, :, :].expand(h, w, 2 * quarter)
    return torch.cat([pe_y, pe_x], 2).reshape(h * w, dim)


class Attention(nn.Module):
    """Multi-head attention with separate query / key-value widths (pre-projected)."""

    def __init__(self, dim: int, heads: int, kv_dim: int | None = None) -> None:
        super().__init__()
        kv_dim = kv_dim or dim
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(kv_dim, dim)
        self.v = nn.Linear(kv_dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b, n, d = q.shape
        h = self.heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, t.shape[1], h, d // h).transpose(1, 2)

        y = functional.scaled_dot_product_attention(split(self.q(q)), split(self.k(k)),
                                                    split(self.v(v)))
        return self.out(y.transpose(1, 2).reshape(b, n, d))


class MLP(nn.Sequential):
    def __init__(self, dim: int, hidden: int, out: int | None = None) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, out or dim))
