"""Memory of RobotSeg: what a frame leaves behind, a bank bounded by K, and the attention that
conditions the current frame on it (SAM 2's memory encoder / bank / memory attention)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional

from .layers import MLP, Attention, ConvBNAct, DWBlock


@dataclass
class MemoryEntry:
    """One past frame: memory tokens (B, N, Cm), its predicted robot probability on the token
    grid (B, N), and the grid size."""

    features: torch.Tensor
    mask: torch.Tensor
    hw: tuple[int, int]

    def detach(self) -> MemoryEntry:
        return MemoryEntry(self.features.detach(), self.mask.detach(), self.hw)


class MemoryBank:
    """The last K entries, oldest first; appending the (K+1)-th drops the oldest, so the state
    of a stream never grows with its length."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f'memory capacity must be >= 1, got {capacity}')
        self.capacity = int(capacity)
        self._entries: deque[MemoryEntry] = deque(maxlen=self.capacity)

    def append(self, entry: MemoryEntry) -> None:
        self._entries.append(entry)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[MemoryEntry]:
        return iter(self._entries)

    @property
    def entries(self) -> list[MemoryEntry]:
        return list(self._entries)

    def copy(self) -> MemoryBank:
        out = MemoryBank(self.capacity)
        for e in self._entries:
            out.append(e)
        return out


class MemoryEncoder(nn.Module):
    """(modulated features at stride 16, predicted robot probability at stride 4) -> memory."""

    def __init__(self, dim: int, memory_dim: int, pool: int = 1) -> None:
        super().__init__()
        self.pool = int(pool)
        self.mask_down = nn.Sequential(ConvBNAct(1, 16, 3, 2), ConvBNAct(16, dim, 3, 2,
                                                                         act=False))
        self.feat_proj = nn.Conv2d(dim, dim, 1)
        self.fuse = nn.Sequential(DWBlock(dim, dim), DWBlock(dim, dim))
        self.out = nn.Conv2d(dim, memory_dim, 1)

    def forward(self, features: torch.Tensor, mask_prob: torch.Tensor) -> MemoryEntry:
        m = self.mask_down(mask_prob)
        if m.shape[-2:] != features.shape[-2:]:
            m = functional.interpolate(m, size=features.shape[-2:], mode='bilinear',
                                       align_corners=False)
        x = self.out(self.fuse(self.feat_proj(features) + m))
        if self.pool > 1:
            x = functional.avg_pool2d(x, self.pool, self.pool, ceil_mode=True)
        h, w = x.shape[-2:]
        grid_mask = functional.adaptive_avg_pool2d(mask_prob, (h, w))
        return MemoryEntry(x.flatten(2).transpose(1, 2), grid_mask.flatten(1), (h, w))


class MemoryAttentionLayer(nn.Module):
    def __init__(self, dim: int, memory_dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), \
            nn.LayerNorm(dim)
        self.self_attn = Attention(dim, heads)
        self.cross_attn = Attention(dim, heads, memory_dim)
        self.mlp = MLP(dim, 2 * dim)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, mem: torch.Tensor,
                mem_key: torch.Tensor) -> torch.Tensor:
        q = self.norm1(x)
        x = x + self.self_attn(q + pos, q + pos, q)
        q = self.norm2(x)
        x = x + self.cross_attn(q + pos, mem_key, mem)
        return x + self.mlp(self.norm3(x))


class MemoryAttention(nn.Module):
    """Current frame tokens attend to the tokens of the last K frames.

    Memory keys carry the spatial encoding and a learned embedding of their age (0 = the
    previous frame); with an empty memory (first frame after a reset) a learned no-memory
    embedding is added instead, as in SAM 2.
    """

    def __init__(self, dim: int, memory_dim: int, heads: int, layers: int, capacity: int
                 ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(MemoryAttentionLayer(dim, memory_dim, heads)
                                    for _ in range(layers))
        self.age_embed = nn.Parameter(torch.zeros(capacity, memory_dim))
        self.no_memory = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_proj = nn.Linear(dim, memory_dim, bias=False)
        nn.init.normal_(self.age_embed, std=0.02)
        nn.init.normal_(self.no_memory, std=0.02)

    def memory_tokens(self, bank: list[MemoryEntry], pos_of: Callable[[int, int], torch.Tensor]
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """(values, keys) of all memory tokens, newest frame age 0; `pos_of(h, w)` gives the
        (h*w, dim) positional encoding of an entry's grid."""
        values, keys = [], []
        n = len(bank)
        for i, entry in enumerate(bank):
            age = min(n - 1 - i, self.age_embed.shape[0] - 1)
            values.append(entry.features)
            keys.append(entry.features + self.pos_proj(pos_of(*entry.hw)) + self.age_embed[age])
        return torch.cat(values, 1), torch.cat(keys, 1)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, bank: list[MemoryEntry],
                pos_of: Callable[[int, int], torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        if not bank:
            return x + self.no_memory, None, None
        mem, mem_key = self.memory_tokens(bank, pos_of)
        for layer in self.layers:
            x = layer(x, pos, mem, mem_key)
        return x, mem, mem_key
