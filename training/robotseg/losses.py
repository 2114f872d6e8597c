"""Losses of RobotSeg training from first-frame masks (and of the fully supervised reference).

- mask_loss: BCE + dice on a labelled frame.
- cycle consistency: after propagating forward to the window's last frame, propagate backward
  (starting from the last frame's memory only) down to frame 0 and compare the prediction there
  with frame 0's mask: errors made on the way cannot be undone on the way back.
- semantic consistency: the embedding pooled under the predicted mask of a later frame must be
  closer to frame 0's robot embedding (pooled under its label) than to frame 0's background
  embedding, and vice versa for the background (an InfoNCE over the two prototypes).
- patch consistency: a later frame's fine encoder patches are pseudo-labelled robot /
  background by their best cosine similarity to frame 0's robot vs background patches
  (ambiguous ones, within a margin, are ignored); the prediction is fitted to those labels.
  (The paper uses DINOv3 patches; here the model's own stride-8 features, detached.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812


def mask_loss(logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 1.0
              ) -> torch.Tensor:
    """logits, target (B, H, W) -> mean over the batch of BCE + dice_weight * soft dice."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction='none').mean((1, 2))
    p = torch.sigmoid(logits)
    inter = (p * target).sum((1, 2))
    dice = 1 - (2 * inter + 1) / (p.sum((1, 2)) + target.sum((1, 2)) + 1)
    return (bce + dice_weight * dice).mean()


def grid_mask(mask: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) mask or probability -> (B, h*w) area fraction on a coarser grid."""
    return F.adaptive_avg_pool2d(mask[:, None], hw).flatten(1)


def pooled(emb: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(B, N, C) tokens, (B, N) weights -> (B, C) weighted mean."""
    return (emb * weights[..., None]).sum(1) / weights.sum(1, keepdim=True).clamp_min(1e-6)


def semantic_consistency(emb_t: torch.Tensor, prob_t: torch.Tensor, emb_0: torch.Tensor,
                         mask_0: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """emb (B, N, C) tokens, prob_t (B, N) predicted robot fraction per token of frame t, mask_0
    (B, N) frame 0's labelled robot fraction. Frame 0's prototypes are targets (detached)."""
    fg0 = F.normalize(pooled(emb_0, mask_0), dim=1).detach()
    bg0 = F.normalize(pooled(emb_0, 1 - mask_0), dim=1).detach()
    fgt = F.normalize(pooled(emb_t, prob_t), dim=1)
    bgt = F.normalize(pooled(emb_t, 1 - prob_t), dim=1)
    protos = torch.stack([fg0, bg0], 1)  # (B, 2, C)
    logits_fg = torch.einsum('bc,bkc->bk', fgt, protos) / temperature
    logits_bg = torch.einsum('bc,bkc->bk', bgt, protos) / temperature
    b = emb_t.shape[0]
    zeros = torch.zeros(b, dtype=torch.long, device=emb_t.device)
    has_robot = (mask_0.sum(1) > 0).float()  # no robot in frame 0: nothing to agree with
    loss = F.cross_entropy(logits_fg, zeros, reduction='none') + \
        F.cross_entropy(logits_bg, zeros + 1, reduction='none')
    return (loss * has_robot).sum() / has_robot.sum().clamp_min(1)


def patch_pseudo_labels(feat_t: torch.Tensor, feat_0: torch.Tensor, mask_0: torch.Tensor,
                        margin: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """feat (B, N, C) patch features, mask_0 (B, N) robot fraction of frame 0's patches ->
    (labels (B, N) in {0, 1}, confident (B, N) bool). Robot patches of frame 0 are those more
    than half robot, background those with none."""
    ft = F.normalize(feat_t.detach(), dim=2)
    f0 = F.normalize(feat_0.detach(), dim=2)
    sim = torch.einsum('bnc,bmc->bnm', ft, f0)  # (B, N, M)
    robot0 = (mask_0 > 0.5)[:, None, :]
    back0 = (mask_0 <= 0.0)[:, None, :]
    s_fg = sim.masked_fill(~robot0, -2.0).amax(2)
    s_bg = sim.masked_fill(~back0, -2.0).amax(2)
    valid = robot0.any(2) & back0.any(2)  # frame 0 has both kinds of patches
    labels = (s_fg > s_bg).float()
    confident = ((s_fg - s_bg).abs() > margin) & valid
    return labels, confident


def patch_consistency(prob_t: torch.Tensor, feat_t: torch.Tensor, feat_0: torch.Tensor,
                      mask_0: torch.Tensor, margin: float = 0.05) -> torch.Tensor:
    """BCE between the predicted robot fraction per patch (B, N) and the patch pseudo-labels."""
    labels, confident = patch_pseudo_labels(feat_t, feat_0, mask_0, margin)
    if not bool(confident.any()):
        return prob_t.sum() * 0.0
    p = prob_t.clamp(1e-4, 1 - 1e-4)
    bce = F.binary_cross_entropy(p, labels, reduction='none')
    return (bce * confident).sum() / confident.sum()
