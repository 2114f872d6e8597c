"""The mask decoder: SAM's two-way transformer, fed with RPG prompt tokens instead of clicks."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

from .layers import MLP, Attention, DWBlock


class TwoWayLayer(nn.Module):
    """Tokens attend to themselves and to the image; the image attends back to the tokens."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(4))
        self.self_attn = Attention(dim, heads)
        self.t2i = Attention(dim, heads)
        self.mlp = MLP(dim, 2 * dim)
        self.i2t = Attention(dim, heads)

    def forward(self, t: torch.Tensor, x: torch.Tensor, pos: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.norms[0](t)
        t = t + self.self_attn(q, q, q)
        q = self.norms[1](t)
        t = t + self.t2i(q, x + pos, x)
        t = t + self.mlp(self.norms[2](t))
        q = self.norms[3](x)
        x = x + self.i2t(q + pos, t, t)
        return t, x


class MaskDecoder(nn.Module):
    def __init__(self, dim: int, heads: int, layers: int, num_outputs: int, upsample_dim: int,
                 skip4: int, skip8: int) -> None:
        super().__init__()
        self.output_tokens = nn.Parameter(torch.randn(num_outputs, dim) * 0.02)
        self.layers = nn.ModuleList(TwoWayLayer(dim, heads) for _ in range(layers))
        self.final_norm = nn.LayerNorm(dim)
        self.final_attn = Attention(dim, heads)
        self.skip8 = nn.Conv2d(skip8, dim, 1)
        self.up8 = DWBlock(dim, 2 * upsample_dim)
        self.skip4 = nn.Conv2d(skip4, 2 * upsample_dim, 1)
        self.up4 = DWBlock(2 * upsample_dim, upsample_dim)
        self.hyper = nn.ModuleList(MLP(dim, dim, upsample_dim) for _ in range(num_outputs))

    def forward(self, x: torch.Tensor, pos: torch.Tensor, hw: tuple[int, int],
                prompts: torch.Tensor, s4: torch.Tensor, s8: torch.Tensor) -> torch.Tensor:
        """x (B, N, C) image tokens on an hw grid, prompts (B, P, C) -> mask logits at
        stride 4, (B, num_outputs, H/4, W/4)."""
        b = x.shape[0]
        out_tokens = self.output_tokens[None].expand(b, -1, -1)
        t = torch.cat([out_tokens, prompts], 1)
        for layer in self.layers:
            t, x = layer(t, x, pos)
        q = self.final_norm(t)
        t = t + self.final_attn(q, x + pos, x)
        fmap = x.transpose(1, 2).reshape(b, -1, *hw)
        y = functional.interpolate(fmap, size=s8.shape[-2:], mode='bilinear',
                                   align_corners=False) + self.skip8(s8)
        y = self.up8(y)
        y = functional.interpolate(y, size=s4.shape[-2:], mode='bilinear',
                                   align_corners=False) + self.skip4(s4)
        y = self.up4(y)
        k = len(self.hyper)
        weights = torch.stack([self.hyper[i](t[:, i]) for i in range(k)], 1)  # (B, k, Cu)
        return torch.einsum('bkc,bchw->bkhw', weights, y)
