"""RPG, the robot prompt generator: prompts for the mask decoder without clicks.

Two kinds of tokens replace SAM's user prompts:
- class tokens: learned embeddings of the categories (arm, gripper, robot), a prior that lets
  the very first frame of a stream be segmented with an empty memory;
- object tokens: the memory features lying under the past predicted masks, clustered into a
  few centroids (k-means, farthest-point initialisation, so the result is deterministic), i.e.
  what *this* robot looked like in the last K frames. Without memory (or with empty past masks)
  a learned "no object" token stands in for each missing centroid.
The "without RPG" ablation (`prompt_mode: random`) feeds Gaussian noise tokens instead.
"""

from __future__ import annotations

import torch
from torch import nn

from .memory import MemoryEntry


def farthest_point_init(points: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of k seeds: the point nearest the mean, then repeatedly the farthest one."""
    d_mean = ((points - points.mean(0, keepdim=True)) ** 2).sum(1)
    chosen = [int(d_mean.argmin())]
    dist = ((points - points[chosen[0]]) ** 2).sum(1)
    for _ in range(1, k):
        nxt = int(dist.argmax())
        chosen.append(nxt)
        dist = torch.minimum(dist, ((points - points[nxt]) ** 2).sum(1))
    return torch.tensor(chosen, device=points.device)


def cluster_tokens(points: torch.Tensor, k: int, weights: torch.Tensor | None = None,
                   iters: int = 5) -> torch.Tensor:
    """k-means of (M, D) points -> (min(k, M), D) centroids.

    Assignments are made without gradient; centroids are (weighted) means of their members,
    so gradients reach the memory features. Empty clusters keep their previous centroid.
    """
    m = points.shape[0]
    k = min(int(k), m)
    if k <= 0:
        return points.new_zeros((0, points.shape[1]))
    w = torch.ones(m, device=points.device, dtype=points.dtype) if weights is None else weights
    with torch.no_grad():
        p = points.detach()
        centroids = p[farthest_point_init(p, k)]
        for _ in range(iters):
            assign = torch.cdist(p, centroids).argmin(1)
            onehot = nn.functional.one_hot(assign, k).to(p.dtype) * w.detach()[:, None]
            mass = onehot.sum(0)
            new = (onehot.t() @ p) / mass.clamp_min(1e-6)[:, None]
            centroids = torch.where(mass[:, None] > 0, new, centroids)
        assign = torch.cdist(p, centroids).argmin(1)
    onehot = nn.functional.one_hot(assign, k).to(points.dtype) * w[:, None]
    mass = onehot.sum(0)
    out = (onehot.t() @ points) / mass.clamp_min(1e-6)[:, None]
    return torch.where(mass[:, None] > 0, out, centroids)


class RobotPromptGenerator(nn.Module):
    def __init__(self, dim: int, memory_dim: int, class_names: tuple[str, ...],
                 object_tokens: int, mask_threshold: float = 0.5, cluster_iters: int = 5,
                 mode: str = 'rpg') -> None:
        super().__init__()
        self.class_names = tuple(class_names)
        self.num_objects = int(object_tokens)
        self.threshold = float(mask_threshold)
        self.iters = int(cluster_iters)
        self.mode = mode
        self.class_tokens = nn.Parameter(torch.randn(len(class_names), dim) * 0.02)
        self.empty_object = nn.Parameter(torch.randn(1, dim) * 0.02)
        self.object_proj = nn.Sequential(nn.Linear(memory_dim, dim), nn.GELU(),
                                         nn.Linear(dim, dim))
        self.object_kind = nn.Parameter(torch.randn(1, dim) * 0.02)

    @property
    def num_tokens(self) -> int:
        return len(self.class_names) + self.num_objects

    def object_tokens(self, bank: list[MemoryEntry], batch: int) -> torch.Tensor:
        """(B, object_tokens, dim): clustered masked memory, padded with the empty token."""
        dim = self.empty_object.shape[1]
        out = self.empty_object.expand(batch, self.num_objects, dim).clone()
        if not bank or self.num_objects == 0:
            return out
        feats = torch.cat([e.features for e in bank], 1)  # (B, M, Cm)
        masks = torch.cat([e.mask for e in bank], 1)  # (B, M)
        rows = []
        for b in range(batch):
            sel = masks[b] > self.threshold
            cent = cluster_tokens(feats[b][sel], self.num_objects, masks[b][sel], self.iters)
            tok = self.object_proj(cent) + self.object_kind
            row = out[b]
            if tok.shape[0]:
                row = torch.cat([tok, row[tok.shape[0]:]], 0)
            rows.append(row)
        return torch.stack(rows, 0)

    def forward(self, bank: list[MemoryEntry], batch: int) -> torch.Tensor:
        """(B, num_tokens, dim) prompt tokens: class tokens first, then object tokens."""
        dim = self.class_tokens.shape[1]
        if self.mode == 'random':
            return torch.randn(batch, self.num_tokens, dim, device=self.class_tokens.device)
        cls = self.class_tokens[None].expand(batch, -1, -1)
        return torch.cat([cls, self.object_tokens(bank, batch)], 1)
