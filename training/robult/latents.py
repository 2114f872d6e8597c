"""Region latents of the fusion student, per modality and shared, and their reconstruction.

Why regions (a fixed grid of pooled cells of one encoder stage) rather than pixels or class
prototypes:
- every modality is aligned to the camera, so cell g of modality m and cell g of the fused map
  see the same part of the scene: a *known* positive pair for any frame, labelled or not;
- class-masked prototypes need labels, so unlabelled frames would have no latents at all;
- pixels make the pair count quadratic in the image size (a 30x40 stride-4 map of 16 frames is
  19k tokens per modality), while a 6x8 grid gives 48 tokens per frame and still separates the
  large classes (floor, wall, table, robot); a labelled cell gets the class most of its pixels
  carry (`cell_classes`), or none when it is mixed.

The latents come from a small projection head shared by all modalities and by the fused map (the
encoder is shared too, so the spaces already agree). `RobultModel` wraps a FusionSegNet so that
the heads run inside `forward` (DistributedDataParallel only reduces gradients of parameters
used in the forward pass) and so that the deployable weights stay those of the FusionSegNet.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from rmseg_ros.modalities import INDEX, MODALITIES

from .config import RobultLossConfig

IGNORE = 255


def region_pool(features: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, gh, gw): mean feature of each grid cell."""
    return F.adaptive_avg_pool2d(features, tuple(grid))


def cell_classes(labels: torch.Tensor, grid: tuple[int, int], num_classes: int,
                 min_purity: float, ignore_index: int = IGNORE) -> torch.Tensor:
    """(B, H, W) labels -> (B, gh*gw) class of each cell, -1 where none.

    A cell has class k when at least `min_purity` of its labelled pixels are k and at least half
    of its pixels are labelled; an unlabelled frame (all ignore) has no classes.
    """
    b = labels.shape[0]
    valid = (labels != ignore_index) & (labels >= 0) & (labels < num_classes)
    onehot = F.one_hot(torch.where(valid, labels, 0).long(), num_classes).permute(0, 3, 1, 2)
    onehot = onehot.float() * valid.unsqueeze(1).float()
    share = F.adaptive_avg_pool2d(onehot, tuple(grid)).flatten(2)  # (B, K, G)
    labelled = share.sum(1)  # fraction of labelled pixels per cell
    top, cls = share.max(1)
    ok = (labelled >= 0.5) & (top >= min_purity * labelled.clamp(min=1e-6))
    return torch.where(ok, cls, torch.full_like(cls, -1)).view(b, -1)


class LatentHead(nn.Module):
    """1x1-conv MLP: stage features -> latent per cell (shared by modalities and fusion)."""

    def __init__(self, channels: int, hidden: int, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True),
                                 nn.Conv2d(hidden, dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Reconstructor(nn.Module):
    """One small MLP per modality m: [shared latent, mean latent of the other present
    modalities, share of the others present] -> latent of m. With no other modality present the
    mean is 0 and the share 0, so a missing modality is imputed from the shared latent alone."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.dim = dim
        self.mlps = nn.ModuleDict({m: nn.Sequential(
            nn.Conv1d(2 * dim + 1, hidden, 1), nn.ReLU(inplace=True), nn.Conv1d(hidden, dim, 1))
            for m in MODALITIES})

    def forward(self, shared: torch.Tensor, modality: torch.Tensor, present: torch.Tensor
                ) -> torch.Tensor:
        """shared (B, D, G), modality (B, M, D, G) (absent rows ignored), present (B, M) bool ->
        (B, M, D, G) reconstructions of every modality's latent, each from the others only."""
        b, m, _, g = modality.shape
        pres = present.to(modality.dtype).view(b, m, 1, 1)
        total = (modality * pres).sum(1, keepdim=True)  # (B, 1, D, G)
        count = pres.sum(1, keepdim=True)
        out = []
        for i, name in enumerate(MODALITIES):
            others = count - pres[:, i:i + 1]  # (B, 1, 1, 1)
            mean = (total - modality[:, i:i + 1] * pres[:, i:i + 1]) / others.clamp(min=1)
            share = (others / max(m - 1, 1)).expand(b, 1, 1, g).reshape(b, 1, g)
            x = torch.cat([shared, mean[:, 0], share], 1)
            out.append(self.mlps[name](x))
        return torch.stack(out, 1)


@dataclass
class RobultLatents:
    """What the Robult losses read from one forward pass (G = cells per frame)."""

    modality: torch.Tensor  # (B, M, D, G) latents of the modalities computed (0 where absent)
    present: torch.Tensor  # (B, M) bool: modality in this forward pass
    shared: torch.Tensor  # (B, D, G) latent of the fused features
    recon: torch.Tensor  # (B, M, D, G) reconstruction of each modality's latent
    target: torch.Tensor  # (B, M, D, G) detached latents to reconstruct
    target_valid: torch.Tensor  # (B, M) bool: the recording has the modality (a target exists)
    grid: tuple[int, int]


@contextlib.contextmanager
def frozen_bn_stats(module: nn.Module) -> Iterator[None]:
    """BatchNorm layers keep normalising with batch statistics (train mode) but do not update
    their running statistics: an extra no-grad pass must not count as a second training batch."""
    saved = []
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training:
            saved.append((m, m.momentum))
            m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in saved:
            m.momentum = momentum


class RobultModel(nn.Module):
    """A FusionSegNet plus the Robult latent head and reconstructor.

    Calls behave like the wrapped network; in training mode the output's
    `extras['robult']` holds RobultLatents. `full_presence` (the modalities the recording has,
    a superset of `presence`) adds reconstruction targets for the dropped modalities from a
    no-grad encoder pass.
    """

    def __init__(self, net: nn.Module, cfg: RobultLossConfig) -> None:
        super().__init__()
        self.net = net
        self.cfg = cfg
        widths = net.cfg.widths
        if not 0 <= cfg.stage < len(widths):
            raise ValueError(f'robult.stage {cfg.stage} out of range 0..{len(widths) - 1}')
        self.head = LatentHead(widths[cfg.stage], cfg.hidden, cfg.dim)
        self.reconstructor = Reconstructor(cfg.dim, cfg.recon.hidden)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) stage features -> (B, D, G) region latents."""
        return self.head(region_pool(features, self.cfg.grid)).flatten(2)

    def latents(self, out: Any, inputs: dict[str, torch.Tensor], presence: torch.Tensor,
                full_presence: torch.Tensor | None) -> RobultLatents:
        s = self.cfg.stage
        shared = self.embed(out.features[s])
        b, d, g = shared.shape
        pres = presence.to(torch.bool)
        modality = shared.new_zeros(b, len(MODALITIES), d, g)
        for m, feat in out.modality_features[s].items():
            modality[:, INDEX[m]] = self.embed(feat)
        modality = modality * pres.view(b, -1, 1, 1).to(modality.dtype)
        target = modality.detach().clone()
        valid = pres.clone()
        if full_presence is not None and self.cfg.recon.impute_dropped:
            full = full_presence.to(torch.bool) | pres
            dropped = full & ~pres
            if bool(dropped.any()):
                names = [m for m in MODALITIES if bool(dropped[:, INDEX[m]].any())]
                keep = dropped.any(1)  # frames that lost at least one recorded modality
                sub = {m: inputs[m][keep] for m in names}
                with torch.no_grad(), frozen_bn_stats(self.net):
                    _, mod_feats = self.net.encode(sub, dropped[keep])
                    rows = torch.nonzero(keep).flatten()
                    for m in names:
                        i = INDEX[m]
                        z = self.embed(mod_feats[s][m])
                        fill = dropped[rows, i]
                        target[rows[fill], i] = z[fill]
            valid = full
        recon = self.reconstructor(shared, modality, pres)
        return RobultLatents(modality, pres, shared, recon, target, valid, tuple(self.cfg.grid))

    def forward(self, inputs: dict[str, torch.Tensor], presence: Any, missing: str = 'remove',
                static: bool = False, full_presence: torch.Tensor | None = None) -> Any:
        out = self.net(inputs, presence, missing, static)
        if self.training:
            pres = torch.as_tensor(presence, device=out.logits.device)
            if pres.dim() == 1:
                pres = pres.unsqueeze(0).expand(out.logits.shape[0], -1)
            out.extras['robult'] = self.latents(out, inputs, pres.to(torch.bool), full_presence)
        return out

    def model_config(self) -> dict[str, Any]:
        return self.net.model_config()


def impute(model: RobultModel, shared: torch.Tensor, modality: torch.Tensor,
           present: torch.Tensor) -> torch.Tensor:
    """Latents of every modality, the absent ones replaced by their reconstruction."""
    recon = model.reconstructor(shared, modality, present)
    keep = present.view(*present.shape, 1, 1).to(modality.dtype)
    return modality * keep + recon * (1 - keep)
