"""The Robult losses: soft positive-unlabelled (PU) contrastive alignment and latent
reconstruction, plus the supervised loss restricted to labelled frames.

Soft PU contrastive loss (anchors: region latents of each modality; candidates: shared (fused)
region latents of every frame in the batch). Each pair (i, j) has a positive weight w_ij:
- 1 for known positives: the same region of the same frame (another view of the same scene
  part), and regions of labelled frames carrying the same class;
- 0 for known negatives: regions of labelled frames with different classes;
- w_ij = exp(-|z_i - z_j|^2 / (2 sigma^2)) (RBF kernel on the unit latents, detached) for every
  other pair, i.e. whenever a frame is unlabelled or a region has no clear class. Such a pair is
  a positive with weight w and a negative with weight 1 - w, instead of a plain negative.
With s_ij = cos(z_i, z_j) / tau, the loss of pair (i, j) contrasts it with the weighted
negatives of its anchor only:  l_ij = -log(e^{s_ij} / (e^{s_ij} + sum_k (1 - w_ik) e^{s_ik})).
The labelled term averages l over known positives, the unlabelled term is the w-weighted mean
over the soft pairs. It is 0 when an anchor has no negative weight at all and falls towards 0
as its positives align and its negatives move away.

Latent reconstruction: 1 - cos between the reconstruction of a modality's latent (from the
shared latent and the other modalities) and the detached latent itself, for every modality the
recording has: present ones keep their specific information in the shared latent, dropped ones
are imputed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812

from training.rmmss.config import LossConfig
from training.rmmss.losses import IGNORE, ohem_cross_entropy

from .config import RobultLossConfig
from .latents import RobultLatents, cell_classes

# cell classes are counted on every 4th pixel: a share estimate over hundreds of pixels per cell
CLASS_STRIDE = 4


def rbf_weights(a: torch.Tensor, b: torch.Tensor, sigma: float) -> torch.Tensor:
    """(N, D), (K, D) -> (N, K) exp(-|a_i - b_j|^2 / (2 sigma^2)), in (0, 1], 1 at distance 0,
    decreasing with the distance."""
    a, b = a.float(), b.float()
    d2 = (a.pow(2).sum(1, keepdim=True) + b.pow(2).sum(1)[None] - 2.0 * a @ b.t()).clamp(min=0)
    return torch.exp(-d2 / (2.0 * float(sigma) ** 2))


def soft_pu_contrastive(anchors: torch.Tensor, candidates: torch.Tensor,
                        known_pos: torch.Tensor, known_neg: torch.Tensor, temperature: float,
                        sigma: float) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """(labelled term, unlabelled term, stats) of the soft PU contrastive loss.

    anchors (N, D), candidates (K, D): raw latents (normalised here); known_pos / known_neg
    (N, K) bool, disjoint. Pairs in neither are soft (RBF-weighted). A term without pairs is 0
    (and keeps the graph).
    """
    za = F.normalize(anchors.float(), dim=1)
    zc = F.normalize(candidates.float(), dim=1)
    sim = za @ zc.t() / float(temperature)
    soft = ~(known_pos | known_neg)
    kernel = rbf_weights(za.detach(), zc.detach(), sigma)
    w = torch.where(known_pos, torch.ones_like(kernel),
                    torch.where(known_neg, torch.zeros_like(kernel), kernel))
    # log sum_k (1 - w_ik) e^{s_ik}; a floor instead of log(0) keeps gradients finite
    log_neg = torch.logsumexp(sim + torch.log((1.0 - w).clamp(min=1e-12)), dim=1, keepdim=True)
    pair = F.softplus(log_neg - sim)  # -log(e^s / (e^s + negatives))
    # weighted means instead of boolean indexing (nonzero() is slow on CPU); 0 without pairs
    pos = known_pos.float()
    labelled = (pair * pos).sum() / pos.sum().clamp(min=1.0)
    ws = w * soft
    unlabelled = (pair * ws).sum() / ws.sum().clamp(min=1e-6)
    n_soft = soft.float().sum()
    stats = {'pu_soft_weight': float((kernel * soft).sum() / n_soft.clamp(min=1.0)),
             'pu_known_pos': float(pos.mean()),
             'pu_known_neg': float(known_neg.float().mean())}
    return labelled, unlabelled, stats


def latent_reconstruction_loss(recon: torch.Tensor, target: torch.Tensor,
                               mask: torch.Tensor) -> torch.Tensor:
    """Mean 1 - cos(recon, target) over the (frame, modality) rows of `mask` and their cells.

    recon, target (B, M, D, G); mask (B, M) bool. The target is detached here: the gradient
    moves the reconstruction (and what it is computed from) towards the latent, not the latent
    towards a blur of the others. 0 when nothing is masked in.
    """
    return masked_mean(reconstruction_errors(recon, target), mask)


def reconstruction_errors(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, M, D, G) -> (B, M, G) 1 - cos over the latent axis, target detached."""
    return 1.0 - F.cosine_similarity(recon.float(), target.detach().float(), dim=2)


def masked_mean(errors: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of (B, M, G) errors over the (B, M) rows of `mask`; 0 (with a graph) for none."""
    weight = mask.to(errors.dtype).unsqueeze(-1).expand_as(errors)
    return (errors * weight).sum() / weight.sum().clamp(min=1.0)


def mask_unlabelled(labels: torch.Tensor, labelled: torch.Tensor | None) -> torch.Tensor:
    """Labels with every pixel of an unlabelled frame set to ignore."""
    if labelled is None:
        return labels
    keep = labelled.to(torch.bool).view(-1, *([1] * (labels.dim() - 1)))
    return torch.where(keep, labels, torch.full_like(labels, IGNORE))


def supervised_loss(logits: torch.Tensor, labels: torch.Tensor, labelled: torch.Tensor | None,
                    lc: LossConfig) -> torch.Tensor:
    """OHEM cross-entropy over the labelled frames of the batch only: whatever labels an
    unlabelled frame carries, it adds nothing to this loss nor to its gradient."""
    return ohem_cross_entropy(logits, mask_unlabelled(labels, labelled), lc.ohem_thresh,
                              lc.ohem_min_kept_fraction)


def anchor_index(present: torch.Tensor, g: int, max_anchors: int = 0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """(N, 3) anchors as (frame, modality, cell): every cell of every present modality, or a
    random subset of `max_anchors` of them (drawn with `generator`)."""
    frame, mod = torch.nonzero(present, as_tuple=True)
    cells = torch.arange(g, device=present.device)
    index = torch.stack([frame.repeat_interleave(g), mod.repeat_interleave(g),
                         cells.repeat(len(frame))], 1)
    if max_anchors and len(index) > max_anchors:
        pick = torch.randperm(len(index), generator=generator)[:max_anchors]
        index = index[pick.to(index.device)]
    return index


def pair_masks(index: torch.Tensor, cls: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Known positive / negative masks (N, B*G) of anchors `index` (frame, modality, cell)
    against the shared cells of every frame; cls (B, G) cell classes (-1: none)."""
    b, g = cls.shape
    frame, cell = index[:, 0], index[:, 2]
    same = (frame * g + cell)[:, None] == torch.arange(b * g, device=cls.device)[None]
    a_cls = cls[frame, cell][:, None]
    c_cls = cls.reshape(1, -1)
    both = (a_cls >= 0) & (c_cls >= 0)
    equal = a_cls == c_cls
    return same | (both & equal), both & ~equal & ~same


def robult_terms(lat: RobultLatents, labels: torch.Tensor, labelled: torch.Tensor | None,
                 cfg: RobultLossConfig, num_classes: int,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
    """Weighted PU + reconstruction loss of one forward pass, and its parts for the logs.

    labels of unlabelled frames are ignored (masked here too), so only labelled frames give
    regions a class; every frame gives cross-modal positives, soft pairs and reconstructions.
    """
    b, _, d, g = lat.modality.shape
    cls = cell_classes(mask_unlabelled(labels, labelled)[:, ::CLASS_STRIDE, ::CLASS_STRIDE],
                       lat.grid, num_classes, cfg.pu.min_purity)
    index = anchor_index(lat.present, g, cfg.pu.max_anchors, generator)
    known_pos, known_neg = pair_masks(index, cls)
    anchors = lat.modality[index[:, 0], index[:, 1], :, index[:, 2]]  # (N, D)
    candidates = lat.shared.permute(0, 2, 1).reshape(b * g, d)
    pu_l, pu_u, stats = soft_pu_contrastive(anchors, candidates, known_pos, known_neg,
                                            cfg.pu.temperature, cfg.pu.rbf_sigma)
    pu = cfg.pu.labelled_weight * pu_l + cfg.pu.unlabelled_weight * pu_u
    errors = reconstruction_errors(lat.recon, lat.target)
    rec = masked_mean(errors, lat.target_valid)
    total = cfg.pu.weight * pu + cfg.recon.weight * rec
    with torch.no_grad():
        missing = lat.target_valid & ~lat.present
        logs = {'pu_labelled': float(pu_l), 'pu_unlabelled': float(pu_u), 'recon': float(rec),
                'recon_present': float(masked_mean(errors, lat.present)),
                'recon_missing': float(masked_mean(errors, missing)),
                'labelled_cells': float((cls >= 0).float().mean()), **stats}
    if not math.isfinite(float(total.detach())):
        raise FloatingPointError(f'Robult loss is not finite: {logs}')
    return total, logs
