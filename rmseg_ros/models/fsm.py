"""RMMSS stage 2: Feature Selection Module (FSM) over a frozen teacher and a frozen robust model.

The full-modality teacher is best when every sensor is there; the robust model (trained with
modality dropout and prototype distillation) is best when some are missing. The FSM learns, per
element, which of the two to trust, so the deployed student keeps the teacher's full-modality
accuracy and the robust model's missing-modality accuracy.

Per stage s (strides 4, 8, 16, 32), with teacher features t and robust features r:
1. a small predictor (1x1 conv per source, summed -> ReLU -> 1x1 conv to 3C) sees both
   sources and outputs a score per source and element, s = tanh(.) in (-1, 1), applied as
   x <- s * x + x (tanh rather than sigmoid: the zero-initialised last layer starts at the
   identity, so the decoder copied from the robust model sees features at its trained scale);
2. its third output is a per-element gate w in (0, 1) for the robust source; the selected
   feature is (1 - w) t' + w r'. The gate starts at sigmoid(`init_bias`) (0.88 for 2.0):
   training starts close to the robust model and moves towards the teacher where that helps.
3. with `presence_gate`, every predictor also sees which modalities are present (a linear map
   of the 0/1 presence vector added to its hidden layer): the teacher was trained with every
   sensor and its features without depth are near chance, which the features alone show only
   weakly; told the subset, the gate could leave the blind teacher out. Off by default: on
   the sim data it changed no subset (docs/results.md), the FSM's deficit lies elsewhere.
The selected stage features are decoded by a copy of the robust model's decoder and classifier
(trainable). Logit level: the teacher's and robust model's stride-4 logits are scored the same
way (l <- s * l + l), and a per-pixel softmax over three sources (teacher, robust, decoded)
mixes them into the final logits, initialised in favour of the decoded ones. Per pixel rather
than per element here, so each pixel's result is a convex mix of whole logit vectors.

Cost: the student runs both frozen models (encoders and heads) plus the FSM, about 3x one
FusionSegNet in eager PyTorch; see bench/model.py.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn

from rmseg_ros.modalities import MODALITIES
from rmseg_ros.models.fusion import (
    FusionConfig,
    FusionSegNet,
    SegOutput,
    effective_presence,
    fuse_batchnorm,
    input_hw,
)
from rmseg_ros.models.fusion import upsample as upsample_logits


@dataclass
class FSMConfig:
    hidden: int = 32
    init_bias: float = 2.0  # initial preference (logit) for robust features / decoded logits
    presence_gate: bool = False  # predictors also see the presence vector (False: checkpoints
    #                              written before it existed)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FSMConfig:
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f'unknown FSMConfig keys {sorted(unknown)}')
        return cls(**d)


class _JointScorer(nn.Module):
    """h = relu(sum_i conv_i(x_i) [+ linear(context)]); out = conv(h), zero-initialised with
    bias `out_bias`.

    One 1x1 conv per source summed instead of a conv over their concatenation: the same maths
    without the copy, and fewer ops (this module runs at every stage of every frame). The
    optional context (a (B, n) vector: which modalities are present) shifts the hidden layer
    per sample.
    """

    def __init__(self, in_channels: list[int], hidden: int, out_bias: torch.Tensor,
                 context: int = 0) -> None:
        super().__init__()
        self.inputs = nn.ModuleList(nn.Conv2d(c, hidden, 1, bias=i == 0)
                                    for i, c in enumerate(in_channels))
        self.context = nn.Linear(context, hidden, bias=False) if context else None
        self.out = nn.Conv2d(hidden, out_bias.numel(), 1)
        nn.init.zeros_(self.out.weight)
        with torch.no_grad():
            self.out.bias.copy_(out_bias)  # type: ignore[union-attr]  # Conv2d(bias=True)

    def forward(self, *xs: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        h = self.inputs[0](xs[0])
        for conv, x in zip(self.inputs[1:], xs[1:], strict=True):
            h = h + conv(x)
        if self.context is not None:
            if context is None:
                raise ValueError('this scorer was built with a context input; none given')
            h = h + self.context(context.to(h.dtype))[:, :, None, None]
        return self.out(torch.relu(h))


class StageSelector(nn.Module):
    """Scores teacher and robust features of one stage and selects per element.

    One joint predictor outputs 3C maps: the teacher's score, the robust model's score and the
    selection gate; it sees both sources, so it can judge one in the light of the other.
    """

    def __init__(self, channels: int, hidden: int, init_bias: float, context: int = 0) -> None:
        super().__init__()
        c = channels
        self.channels = c
        # gate w = (1 + tanh(g)) / 2 = sigmoid(2 g): bias init_bias / 2 gives w = sigmoid(init_bias)
        bias = torch.cat([torch.zeros(2 * c), torch.full((c,), 0.5 * float(init_bias))])
        self.predictor = _JointScorer([c, c], hidden, bias, context)

    def coefficients(self, t: torch.Tensor, r: torch.Tensor, context: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-element factors a_t, a_r of selected = a_t * t + a_r * r, and the gate w:
        a_t = (1 - w)(1 + s_t), a_r = w (1 + s_r).

        One tanh over all 3C predictor outputs (the gate is a sigmoid written as a tanh): on a
        channels-last tensor, transcendental ops on channel slices are several times slower.
        """
        c = self.channels
        u = torch.tanh(self.predictor(t, r, context=context)) + 1.0  # (1 + s_t, 1 + s_r, 2 w)
        w = 0.5 * u[:, 2 * c:]
        return (1.0 - w) * u[:, :c], w * u[:, c:2 * c], w

    def forward(self, t: torch.Tensor, r: torch.Tensor, context: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> selected (B, C, h, w), robust weight w (B, C, h, w) in (0, 1)."""
        a_t, a_r, w = self.coefficients(t, r, context)
        return a_t * t + a_r * r, w


class LogitSelector(nn.Module):
    """Scores teacher and robust logits; a per-pixel softmax over (teacher, robust, decoded)."""

    def __init__(self, num_classes: int, hidden: int, init_bias: float, context: int = 0
                 ) -> None:
        super().__init__()
        k = num_classes
        self.k = k
        bias = torch.cat([torch.zeros(2 * k), torch.tensor([0.0, 0.0, float(init_bias)])])
        self.predictor = _JointScorer([k, k, k], hidden, bias, context)

    def forward(self, lt: torch.Tensor, lr: torch.Tensor, ld: torch.Tensor,
                context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """-> logits (B, K, h, w), weights (B, 3, h, w) of (teacher, robust, decoded)."""
        k = self.k
        out = self.predictor(lt, lr, ld, context=context)
        g = torch.softmax(out[:, 2 * k:], dim=1)
        u = torch.tanh(out[:, :2 * k]) + 1.0  # 1 + s for teacher and robust logits
        return (g[:, 0:1] * u[:, :k]) * lt + (g[:, 1:2] * u[:, k:]) * lr + g[:, 2:3] * ld, g


class FeatureSelectionModule(nn.Module):
    """Per-stage selectors + a decoder/classifier initialised from the robust model's."""

    def __init__(self, robust: FusionSegNet, cfg: FSMConfig) -> None:
        super().__init__()
        widths, k = robust.cfg.widths, robust.cfg.num_classes
        ctx = len(MODALITIES) if cfg.presence_gate else 0
        self.presence_gate = cfg.presence_gate
        self.stages = nn.ModuleList(StageSelector(w, cfg.hidden, cfg.init_bias, ctx)
                                    for w in widths)
        self.decoder = copy.deepcopy(robust.decoder)
        self.dropout = nn.Dropout2d(0.1)
        self.classifier = copy.deepcopy(robust.classifier)
        self.logits = LogitSelector(k, cfg.hidden, cfg.init_bias, ctx)
        for p in self.parameters():
            p.requires_grad_(True)

    def forward(self, t_feats: list[torch.Tensor], r_feats: list[torch.Tensor],
                t_logits: torch.Tensor, r_logits: torch.Tensor,
                presence: torch.Tensor | None = None) -> dict[str, Any]:
        """presence: (B, M) bool of the modalities present (used with `presence_gate`)."""
        ctx = presence.float() if self.presence_gate and presence is not None else None
        selected, weights = [], []
        for sel, t, r in zip(self.stages, t_feats, r_feats, strict=True):
            x, w = sel(t, r, ctx)
            selected.append(x)
            weights.append(w)
        dec = self.decoder(selected)
        decoded = self.classifier(self.dropout(dec))
        logits, g = self.logits(t_logits, r_logits, decoded, ctx)
        return {'features': selected, 'feature_selection': weights, 'decoder_features': dec,
                'decoded_logits': decoded, 'logits': logits, 'logit_selection': g}


def _check_pair(teacher: FusionSegNet, robust: FusionSegNet) -> None:
    a, b = teacher.cfg, robust.cfg
    for name in ('num_classes', 'widths', 'event_bins'):
        if getattr(a, name) != getattr(b, name):
            raise ValueError(f'teacher and robust model differ in {name}: '
                             f'{getattr(a, name)} vs {getattr(b, name)}')


class FSMStudent(nn.Module):
    """Frozen teacher + frozen robust model + trainable FSM: the deployed RMMSS student."""

    def __init__(self, teacher: FusionSegNet, robust: FusionSegNet, cfg: FSMConfig | None = None
                 ) -> None:
        super().__init__()
        _check_pair(teacher, robust)
        self.cfg = cfg or FSMConfig()
        self.teacher = teacher
        self.robust = robust
        for p in [*teacher.parameters(), *robust.parameters()]:
            p.requires_grad_(False)
        self.fsm = FeatureSelectionModule(robust, self.cfg)
        self.teacher.eval()
        self.robust.eval()

    def train(self, mode: bool = True) -> FSMStudent:
        """Only the FSM follows `mode`: the frozen models' BatchNorm statistics must not move."""
        super().train(mode)
        self.teacher.eval()
        self.robust.eval()
        return self

    @property
    def classifier(self) -> nn.Conv2d:
        """The trainable last layer (the FSM's copy of the robust classifier)."""
        return self.fsm.classifier

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.fsm.parameters() if p.requires_grad]

    def model_config(self) -> dict[str, Any]:
        return {'teacher': self.teacher.cfg.to_dict(), 'robust': self.robust.cfg.to_dict(),
                'fsm': self.cfg.to_dict()}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> FSMStudent:
        return cls(FusionSegNet(FusionConfig.from_dict(config['teacher'])),
                   FusionSegNet(FusionConfig.from_dict(config['robust'])),
                   FSMConfig.from_dict(config.get('fsm', {})))

    def forward(self, inputs: dict[str, torch.Tensor], presence: Any, missing: str = 'remove',
                static: bool = False, upsample: bool = True) -> SegOutput:
        """upsample=False: logits at stride 4, as FusionSegNet.forward."""
        out_hw = input_hw(inputs)
        with torch.no_grad():
            t_feats, _, _ = self.teacher._encode(inputs, presence, missing, static)
            t_logits, _ = self.teacher.head(t_feats)
            r_feats, r_mod, r_weights = self.robust._encode(inputs, presence, missing, static)
            r_logits, _ = self.robust.head(r_feats)
        sel = self.fsm(t_feats, r_feats, t_logits, r_logits,
                       effective_presence(inputs, presence) if self.cfg.presence_gate else None)
        extras = {'teacher_logits': t_logits, 'robust_logits': r_logits,
                  'decoded_logits': sel['decoded_logits'],
                  'feature_selection': sel['feature_selection'],
                  'logit_selection': sel['logit_selection']}
        logits = sel['logits'] if not upsample else upsample_logits(sel['logits'], out_hw)
        return SegOutput(logits, sel['features'], r_mod,
                         sel['decoder_features'], r_weights, extras)

    def fuse_batchnorm(self) -> FSMStudent:
        """Fold every BatchNorm into its conv (inference only: puts the model in eval mode)."""
        self.eval()
        fuse_batchnorm(self)
        return self
