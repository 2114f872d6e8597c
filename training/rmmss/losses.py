"""Losses of the RMMSS pipeline: OHEM cross-entropy, pixel-logit KL to a frozen teacher, class
prototypes and the Hybrid Prototype Distillation (HPDM).

Conventions (after the RMMSS public code, see REFERENCES.md): a prototype is the masked mean of a
feature map over the pixels of one class (labels resized with nearest neighbour to the stage's
size); the prototype loss is a KL divergence over the *class axis* (for each channel, a softmax
over the classes present) between teacher and student prototypes. Prototypes are computed per
sample, so a student that saw a modality subset is compared with the teacher's view of the same
scene; classes absent from a sample are left out of its softmax, and a sample with fewer than two
classes contributes nothing (a distribution over one class carries no information).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812

from rmseg_ros.modalities import INDEX

IGNORE = 255


def ohem_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, thresh: float = 0.7,
                       min_kept_fraction: float = 1 / 16, min_kept: int = 1,
                       ignore_index: int = IGNORE,
                       class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy averaged over the hard pixels only.

    A pixel is hard when the probability of its true class is below `thresh` (its loss above
    -log(thresh)). When fewer than max(min_kept, min_kept_fraction * valid) pixels are hard, the
    highest losses up to that count are kept instead, so a nearly solved batch still trains.
    With `class_weights` (K,), the kept pixels' losses are averaged with the weight of their
    true class (sum w_i l_i / sum w_i): hardness is judged on the unweighted loss, so the
    weights change how much a rare class's hard pixels count, not which pixels are kept.
    """
    loss = F.cross_entropy(logits.float(), labels, ignore_index=ignore_index,
                           reduction='none').flatten()
    flat = labels.flatten()
    valid = flat != ignore_index
    n_valid = int(valid.sum())
    if n_valid == 0:
        return logits.sum() * 0.0  # keeps the graph: every rank must produce gradients
    valid_loss = loss[valid]
    n_min = min(n_valid, max(int(min_kept), int(n_valid * min_kept_fraction)))
    hard = valid_loss > -math.log(thresh)
    if int(hard.sum()) < n_min:
        keep = valid_loss.topk(n_min).indices
    else:
        keep = hard.nonzero().flatten()
    if class_weights is None:
        return valid_loss[keep].mean()
    w = class_weights.to(loss.device, torch.float32)[flat[valid][keep]]
    return (w * valid_loss[keep]).sum() / w.sum().clamp(min=1e-12)


def pixel_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
             temperature: float = 1.0, labels: torch.Tensor | None = None,
             ignore_index: int = IGNORE) -> torch.Tensor:
    """KL(teacher || student) of the per-pixel class distributions, averaged over pixels, times
    T^2 (so gradients keep their scale whatever the temperature). With `labels`, pixels labelled
    `ignore_index` are left out; by default every pixel counts (the teacher labels them all)."""
    t = float(temperature)
    log_s = F.log_softmax(student_logits.float() / t, dim=1)
    log_t = F.log_softmax(teacher_logits.detach().float() / t, dim=1)
    kl = (log_t.exp() * (log_t - log_s)).sum(1)  # (B, H, W)
    if labels is not None:
        if labels.shape[-2:] != kl.shape[-2:]:
            labels = resize_labels(labels, kl.shape[-2:])
        mask = labels != ignore_index
        if not bool(mask.any()):
            return kl.sum() * 0.0
        kl = kl[mask]
    return kl.mean() * t * t


def resize_labels(labels: torch.Tensor, hw: Sequence[int]) -> torch.Tensor:
    """Nearest-neighbour resize of (B, H, W) integer labels (class ids must not blend)."""
    if tuple(labels.shape[-2:]) == tuple(hw):
        return labels
    return F.interpolate(labels[:, None].float(), size=tuple(hw), mode='nearest')[:, 0].long()


def class_masks(labels: torch.Tensor, hw: Sequence[int], num_classes: int,
                ignore_index: int = IGNORE) -> torch.Tensor:
    """(B, h*w, K) one-hot class membership of labels resized (nearest) to hw; ignored and
    out-of-range labels belong to no class."""
    b = labels.shape[0]
    lab = resize_labels(labels, hw).reshape(b, -1)
    valid = (lab != ignore_index) & (lab >= 0) & (lab < num_classes)
    onehot = F.one_hot(torch.where(valid, lab, 0), num_classes)
    return (onehot * valid.unsqueeze(-1)).float()


def class_prototypes(features: torch.Tensor, labels: torch.Tensor, num_classes: int,
                     ignore_index: int = IGNORE, sample_mask: torch.Tensor | None = None,
                     masks: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample class prototypes: the mean feature over each class's pixels.

    features (B, C, h, w), labels (B, H, W) -> prototypes (B, K, C) and present (B, K) bool (the
    class has at least one pixel in the sample). Prototypes of absent classes are 0. Rows of
    samples with `sample_mask` False are marked absent. `masks`: class_masks() of the labels at
    (h, w), when the caller has them already.
    """
    b, c, h, w = features.shape
    onehot = masks if masks is not None else class_masks(labels, (h, w), num_classes,
                                                         ignore_index)
    onehot = onehot.to(features.dtype)
    counts = onehot.sum(1)  # (B, K)
    sums = torch.einsum('bnk,bcn->bkc', onehot, features.reshape(b, c, h * w))
    present = counts > 0
    if sample_mask is not None:
        present = present & sample_mask.view(b, 1).to(torch.bool)
    protos = sums / counts.clamp(min=1).unsqueeze(-1)
    return protos * present.unsqueeze(-1).to(features.dtype), present


def prototype_kl(student: torch.Tensor, teacher: torch.Tensor, present: torch.Tensor,
                 temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) over the class axis of prototypes (B, K, C), masked by `present`
    (B, K): for each sample and channel, softmax over the present classes. Mean over the
    (sample, channel) pairs of samples with at least two present classes; 0 when there is none."""
    if student.shape != teacher.shape:
        raise ValueError(f'prototype shapes differ: student {tuple(student.shape)}, teacher '
                         f'{tuple(teacher.shape)} (distil between models of equal widths)')
    t = float(temperature)
    mask = present.unsqueeze(-1)  # (B, K, 1)
    usable = present.sum(1) >= 2  # (B,)
    if not bool(usable.any()):
        return student.sum() * 0.0
    neg = torch.finfo(torch.float32).min / 4
    s = torch.where(mask, student.float() / t, torch.full_like(student.float(), neg))
    tt = torch.where(mask, teacher.detach().float() / t, torch.full_like(student.float(), neg))
    log_s = F.log_softmax(s, dim=1)
    log_t = F.log_softmax(tt, dim=1)
    kl = torch.where(mask, log_t.exp() * (log_t - log_s), torch.zeros_like(log_s)).sum(1)  # (B,C)
    return kl[usable].mean() * t * t


@dataclass
class HPDMWeights:
    """Relative weights of the three kinds of prototype pairings (each averaged over its terms)."""

    fused: float = 1.0  # student fused (modality subset) vs teacher fused (all modalities)
    intra: float = 1.0  # student modality m vs teacher modality m
    cross: float = 1.0  # student modality m vs teacher fused (cross-modal)


def hybrid_prototype_loss(student_features: Sequence[torch.Tensor],
                          student_modality_features: Sequence[dict[str, torch.Tensor]],
                          teacher_features: Sequence[torch.Tensor],
                          teacher_modality_features: Sequence[dict[str, torch.Tensor]],
                          labels: torch.Tensor, student_presence: torch.Tensor, num_classes: int,
                          stages: Sequence[int] = (0, 1, 2, 3), temperature: float = 1.0,
                          weights: HPDMWeights | None = None, ignore_index: int = IGNORE,
                          ) -> tuple[torch.Tensor, dict[str, float]]:
    """Hybrid Prototype Distillation over stages and modality views.

    For each stage s in `stages`: fused student prototypes (from the student's modality subset)
    against the teacher's fused prototypes (full view); for every modality m the student computed,
    its prototypes (only in samples where m was present for the student) against the teacher's
    prototypes of m (intra-modal) and against the teacher's fused prototypes (cross-modal).
    Returns the weighted sum of the three kinds' means and each kind's mean for logging.
    """
    w = weights or HPDMWeights()
    pres = student_presence.to(torch.bool)
    terms: dict[str, list[torch.Tensor]] = {'fused': [], 'intra': [], 'cross': []}

    for s in stages:
        masks = class_masks(labels, teacher_features[s].shape[-2:], num_classes, ignore_index)

        def protos(feat: torch.Tensor, mask: torch.Tensor | None = None, masks=masks):
            return class_prototypes(feat, labels, num_classes, ignore_index, mask, masks)

        t_fused, t_present = protos(teacher_features[s])
        s_fused, s_present = protos(student_features[s])
        terms['fused'].append(prototype_kl(s_fused, t_fused, s_present & t_present, temperature))
        for m, feat in student_modality_features[s].items():
            s_m, s_m_present = protos(feat, pres[:, INDEX[m]])
            if not bool(s_m_present.any()):
                continue
            terms['cross'].append(prototype_kl(s_m, t_fused, s_m_present & t_present,
                                               temperature))
            if m in teacher_modality_features[s]:
                t_m, t_m_present = protos(teacher_modality_features[s][m])
                terms['intra'].append(prototype_kl(s_m, t_m, s_m_present & t_m_present,
                                                   temperature))
    anchor = student_features[stages[0]].sum() * 0.0
    means = {k: torch.stack(v).mean() if v else anchor for k, v in terms.items()}
    total = w.fused * means['fused'] + w.intra * means['intra'] + w.cross * means['cross']
    return total, {f'proto_{k}': float(v.detach()) for k, v in means.items()}
