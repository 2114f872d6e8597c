"""The Robult objective's settings, shared by `rmseg-train robult` (training/configs/robult.yaml)
and the RMMSS robust stage (its `robult:` block): plain dataclasses without training imports, so
the RMMSS config can hold one without an import cycle."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PUConfig:
    """Soft positive-unlabelled contrastive loss between modality and shared region latents."""

    weight: float = 0.1  # of the whole PU term in the total loss
    labelled_weight: float = 1.0  # known positives: same region across modalities, same class
    unlabelled_weight: float = 1.0  # soft pairs: RBF-weighted positives, (1 - w) negatives
    temperature: float = 0.2  # tau of the cosine similarities
    rbf_sigma: float = 0.5  # bandwidth of exp(-d^2 / (2 sigma^2)) on unit latents (d^2 in [0, 4])
    min_purity: float = 0.6  # a labelled region has a class when this share of its pixels has it
    max_anchors: int = 512  # random subset of anchors per step (0: all)


@dataclass
class ReconConfig:
    """Latent reconstruction: each modality's latent from the shared one and the others'."""

    weight: float = 1.0
    hidden: int = 64
    # targets for modalities dropped from the step's forward pass: one extra no-grad encoder pass
    # over the recorded modalities, so the reconstruction learns to impute them
    impute_dropped: bool = True


@dataclass
class RobultLossConfig:
    enabled: bool = False
    stage: int = 2  # encoder stage whose features give the latents (0..3, strides 4..32)
    grid: tuple[int, int] = (6, 8)  # regions: adaptive average pooling of the stage map
    dim: int = 64  # latent size
    hidden: int = 64  # projection head width
    pu: PUConfig = field(default_factory=PUConfig)
    recon: ReconConfig = field(default_factory=ReconConfig)
    # forward labelled and unlabelled frames as two batches, so BatchNorm normalises the
    # supervised frames with statistics of labelled frames only (as the supervised baseline);
    # with whole recordings labelled a mixed batch cost 5.8 points (docs/results.md, Robult)
    separate_unlabelled_forward: bool = True
