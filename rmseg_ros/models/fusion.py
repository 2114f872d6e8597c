"""Any-modal fusion segmentation network (the student of the RMMSS pipeline).

Layout: per-modality stems (C_m -> widths[0], stride 4) -> one encoder shared over a modality
axis -> per-stage fusion weighted by learned per-pixel scores over the *present* modalities ->
light FPN decoder with one self-attention block over the stride-32 tokens -> 1x1 classifier ->
bilinear upsampling to the input size.

Why a shared encoder (AnySeg-style) rather than one encoder per modality: the present modalities
are stacked on the batch axis and the shared stages run once, so eager PyTorch pays the per-op
overhead once instead of once per modality. Measured with `bench/model.py --compare-encoders`
(240x320, four modalities, batch 1, 2 threads, shared 2-core VM, medians of 50 runs, two
runs): 23-24 ms shared vs 35-39 ms for four separate encoders of the same widths. It also has
4x fewer encoder parameters, and a rarely present modality still trains the shared weights
through the others. Each modality keeps its own stem (different channel counts and
statistics). `shared_encoder=False` builds per-modality encoders for comparison.

Speed notes (eager CPU): per-op overhead dominates at this size, so the stem is one 4x4/4
"patchify" conv, stride-4 blocks are depthwise-separable without expansion, downsampling is a
2x2/2 conv, and the fusion sums over a channels-last view in two ops. Run it channels-last with
BatchNorm folded (`fuse_batchnorm`), as the Segmenter does: 1x1 and depthwise convs are several
times slower in NCHW here.

Why per-pixel scores with a masked softmax: a removed modality must have exactly zero weight
(not a zero-filled input that still shifts the mean), and a present one may be locally useless
(dark RGB region, LiDAR shadow), so each pixel weighs the modalities it has. `missing='zero'`
is the naive baseline: absent modalities are fed as zero tensors and keep their softmax share.

Normalisation: BatchNorm (folded into the convolutions for inference by `fuse_batchnorm`, and
by the ONNX exporter); the smallest training map is 7x10 at 240x320, so batch size 1 still has
70 values per channel (4x that with four modalities stacked). The attention uses LayerNorm.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import nn
from torch.nn import functional

from rmseg_ros.modalities import INDEX, MODALITIES, input_channels

MISSING_MODES = ('remove', 'zero')
_NEG = 1e4  # subtracted from the scores of absent modalities before the softmax


@dataclass
class FusionConfig:
    num_classes: int
    event_bins: int = 5
    widths: tuple[int, ...] = (16, 32, 64, 128)  # stage channels at strides 4, 8, 16, 32
    depths: tuple[int, ...] = (1, 1, 2, 1)
    decoder_dim: int = 32
    attention_heads: int = 4
    shared_encoder: bool = True  # one encoder over a modality axis (AnySeg-style)
    expansion: int = 2  # inverted-residual expansion ratio
    # per image and channel zero mean, unit std of the RGB input: a global light gain is divided
    # out, so a dark scene reaches the encoder with the contrast of a lit one
    rgb_standardize: bool = False

    def __post_init__(self) -> None:
        self.widths = tuple(int(w) for w in self.widths)
        self.depths = tuple(int(d) for d in self.depths)
        if len(self.widths) != 4 or len(self.depths) != 4:
            raise ValueError('widths and depths need 4 entries (strides 4, 8, 16, 32)')
        if self.num_classes < 1:
            raise ValueError(f'num_classes must be >= 1, got {self.num_classes}')
        if self.decoder_dim % self.attention_heads:
            raise ValueError('decoder_dim must be divisible by attention_heads')

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d['widths'], d['depths'] = list(self.widths), list(self.depths)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FusionConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f'unknown FusionConfig keys {sorted(unknown)}')
        return cls(**d)


@dataclass
class SegOutput:
    logits: torch.Tensor  # (B, K, H, W) at the input resolution (stride 4 with upsample=False)
    features: list[torch.Tensor]  # fused per-stage features, strides 4, 8, 16, 32
    modality_features: list[dict[str, torch.Tensor]]  # per stage {modality: (B, C_s, h, w)}
    decoder_features: torch.Tensor  # (B, decoder_dim, H/4, W/4): input of `classifier`
    # per stage {modality: (B, 1, h, w)} fusion weights of the computed modalities (others: 0)
    fusion_weights: list[dict[str, torch.Tensor]] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)  # model-specific (FSM selections...)


# ----------------------------------------------------------------------------- building blocks

class ConvBN(nn.Sequential):
    """Conv2d (no bias) + BatchNorm2d [+ ReLU]; `fuse()` folds the BN into the conv."""

    def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1,
                 act: bool = True) -> None:
        super().__init__(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True) if act else nn.Identity())

    def fuse(self) -> None:
        conv, bn = self[0], self[1]
        if not isinstance(bn, nn.BatchNorm2d):
            return
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                          conv.padding, groups=conv.groups, bias=True)
        with torch.no_grad():
            fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
            fused.bias.copy_(bn.bias - bn.running_mean * scale)
        fused.to(conv.weight.device)
        fused.requires_grad_(conv.weight.requires_grad)  # frozen models stay frozen
        self[0], self[1] = fused, nn.Identity()


class InvertedResidual(nn.Module):
    """MobileNetV2 block (1x1 expand, 3x3 depthwise, 1x1 project, residual); with expansion 1 it
    is a residual depthwise-separable block (3x3 depthwise, 1x1), 4x cheaper at stride 4."""

    def __init__(self, channels: int, expansion: int) -> None:
        super().__init__()
        hidden = channels * expansion
        layers = [ConvBN(channels, hidden, 1)] if expansion > 1 else []
        layers += [ConvBN(hidden, hidden, 3, groups=hidden), ConvBN(hidden, channels, 1, act=False)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class Downsample(ConvBN):
    """2x2/2 dense conv ('patch merging'): cheaper than a strided inverted-residual block, whose
    expansion would run at the higher resolution."""

    def __init__(self, cin: int, cout: int) -> None:
        nn.Sequential.__init__(self, nn.Conv2d(cin, cout, 2, 2, 0, bias=False),
                               nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class PatchStem(ConvBN):
    """Stride 4 in one 4x4/4 'patchify' conv: full-resolution 3x3 convs cost more than the whole
    stride-32 stage on this CPU; the stage-0 blocks add the local 3x3 context."""

    def __init__(self, cin: int, cout: int) -> None:
        nn.Sequential.__init__(self, nn.Conv2d(cin, cout, 4, 4, 0, bias=False),
                               nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _encoder(cfg: FusionConfig) -> nn.ModuleList:
    """Stage 0 (stride 4): depthwise-separable blocks; then downsample + inverted residuals."""
    stages = [nn.Sequential(*[InvertedResidual(cfg.widths[0], 1) for _ in range(cfg.depths[0])])]
    for i in range(1, len(cfg.widths)):
        blocks = [Downsample(cfg.widths[i - 1], cfg.widths[i])]
        blocks += [InvertedResidual(cfg.widths[i], cfg.expansion) for _ in range(cfg.depths[i])]
        stages.append(nn.Sequential(*blocks))
    return nn.ModuleList(stages)


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """Softmax over `dim` restricted to mask==True entries; masked entries are exactly 0.

    Written with arithmetic instead of -inf so it traces to ONNX and stays finite in fp16.
    """
    maskf = mask.to(scores.dtype)
    weights = torch.softmax(scores.float() - (1.0 - maskf.float()) * _NEG, dim=dim)
    return (weights * maskf.float()).to(scores.dtype)


class ModalityFusion(nn.Module):
    """Per-pixel score (1x1 conv, shared over modalities) + per-modality bias -> masked softmax."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.score = nn.Conv2d(channels, 1, 1)
        self.bias = nn.Parameter(torch.zeros(len(MODALITIES)))

    def forward(self, parts: list[torch.Tensor], stacked: torch.Tensor | None, mod_index: list[int],
                mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """parts: M tensors (B, C, h, w); stacked: the same as one (M*B, C, h, w) tensor (one score
        conv instead of M) or None; mask (B, M) or None (all present) ->
        fused (B, C, h, w), weights (M, B, 1, h, w)."""
        m = len(mod_index)
        b, _, h, w = parts[0].shape
        if m == 1 and mask is None:
            return parts[0], parts[0].new_ones(1, b, 1, h, w)
        if stacked is not None:
            scores = self.score(stacked).view(m, b, 1, h, w)
        else:
            scores = torch.stack([self.score(p) for p in parts])
        bias = self.bias if mod_index == [0, 1, 2, 3] else self.bias[mod_index]
        scores = scores + bias.view(m, 1, 1, 1, 1)
        if mask is None:
            weights = torch.softmax(scores, dim=0)
        else:
            weights = masked_softmax(scores, mask.t().reshape(m, b, 1, 1, 1), dim=0)
        return _weighted_sum(parts, stacked, weights), weights


def _weighted_sum(parts: list[torch.Tensor], stacked: torch.Tensor | None,
                  weights: torch.Tensor) -> torch.Tensor:
    """sum_m weights[m] * parts[m]; weights (M, B, 1, h, w).

    A channels-last stacked tensor is (M, B*h*w, C) in memory, so the sum over M is one
    contiguous reduction (2 ops); otherwise M products and M-1 additions of 4-D tensors.
    """
    m = weights.shape[0]
    if stacked is not None and stacked.is_contiguous(memory_format=torch.channels_last) \
            and not stacked.is_contiguous():
        mb, c, h, w = stacked.shape
        b = mb // m
        feats = stacked.permute(0, 2, 3, 1).reshape(m, b, h, w, c)
        fused = (feats * weights.view(m, b, h, w, 1)).sum(0)
        return fused.permute(0, 3, 1, 2)
    fused = parts[0] * weights[0]
    for i in range(1, m):
        fused = fused + parts[i] * weights[i]
    return fused


class TokenAttention(nn.Module):
    """Pre-norm multi-head self-attention + MLP over the tokens of a map (global context)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)  # (B, N, C)
        q, k, v = self.qkv(self.norm1(t)).view(b, h * w, 3, self.heads, c // self.heads).permute(
            2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, d)
        attn = torch.softmax((q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5, dim=-1)
        t = t + self.proj((attn @ v).transpose(1, 2).reshape(b, h * w, c))
        t = t + self.mlp(self.norm2(t))
        return t.transpose(1, 2).reshape(b, c, h, w)


class FPNDecoder(nn.Module):
    """Laterals to decoder_dim, attention at stride 32, top-down sums, separable 3x3 smooth."""

    def __init__(self, widths: tuple[int, ...], dim: int, heads: int) -> None:
        super().__init__()
        self.laterals = nn.ModuleList(ConvBN(w, dim, 1, act=False) for w in widths)
        self.attention = TokenAttention(dim, heads)
        self.smooth = nn.Sequential(ConvBN(dim, dim, 3, groups=dim), ConvBN(dim, dim, 1))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        p = self.attention(self.laterals[-1](features[-1]))
        for i in range(len(features) - 2, -1, -1):
            lat = self.laterals[i](features[i])
            p = lat + upsample(p, lat.shape[-2:])
        return self.smooth(p)


def _presence_mask(presence: torch.Tensor | Any, batch: int, device: torch.device
                   ) -> torch.Tensor:
    p = torch.as_tensor(presence, device=device)
    if p.dtype != torch.bool:
        p = p > 0.5
    if p.dim() == 1:
        p = p.unsqueeze(0).expand(batch, -1)
    if tuple(p.shape) != (batch, len(MODALITIES)):
        raise ValueError(f'presence must have shape ({len(MODALITIES)},) or ({batch}, '
                         f'{len(MODALITIES)}), got {tuple(p.shape)}')
    return p


def effective_presence(inputs: dict[str, torch.Tensor], presence: torch.Tensor | Any
                       ) -> torch.Tensor:
    """(B, M) bool: modalities marked present *and* given as tensors (what the encoder uses)."""
    ref = next(iter(inputs.values()))
    given = torch.tensor([m in inputs for m in MODALITIES], device=ref.device)
    return _presence_mask(presence, ref.shape[0], ref.device) & given


# ----------------------------------------------------------------------------- the network

class FusionSegNet(nn.Module):
    """Any-modal segmentation network; see the module docstring for the design."""

    def __init__(self, cfg: FusionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        chans = input_channels(cfg.event_bins)
        self.stems = nn.ModuleDict({m: PatchStem(chans[m], cfg.widths[0])
                                    for m in MODALITIES})
        if cfg.shared_encoder:
            self.encoder = _encoder(cfg)
        else:
            self.encoders = nn.ModuleDict({m: _encoder(cfg) for m in MODALITIES})
        self.fusions = nn.ModuleList(ModalityFusion(w) for w in cfg.widths)
        self.decoder = FPNDecoder(cfg.widths, cfg.decoder_dim, cfg.attention_heads)
        self.dropout = nn.Dropout2d(0.1)
        self.classifier = nn.Conv2d(cfg.decoder_dim, cfg.num_classes, 1)

    # -- encoding
    def _select(self, inputs: dict[str, torch.Tensor], presence: Any, missing: str,
                static: bool) -> tuple[list[str], dict[str, torch.Tensor], torch.Tensor | None]:
        """Modalities to compute, their (sanitised) tensors, the (B, M) fusion mask (None: all)."""
        if missing not in MISSING_MODES:
            raise ValueError(f'missing must be one of {MISSING_MODES}, got {missing!r}')
        unknown = set(inputs) - set(MODALITIES)
        if unknown:
            raise ValueError(f'unknown modalities {sorted(unknown)}; known: {list(MODALITIES)}')
        if not inputs:
            raise ValueError('no modality tensors given')
        ref = next(iter(inputs.values()))
        batch = ref.shape[0]
        pres = effective_presence(inputs, presence)
        if not static and not bool(pres.any(dim=1).all()):
            raise ValueError('every sample needs at least one present modality '
                             f'(presence {pres.int().tolist()}, given {sorted(inputs)})')
        if missing == 'zero':
            names = list(MODALITIES)
            chans = input_channels(self.cfg.event_bins)
            tensors = {}
            for i, m in enumerate(names):
                if m in inputs:
                    tensors[m] = torch.where(pres[:, i].view(batch, 1, 1, 1), inputs[m],
                                             torch.zeros_like(inputs[m]))
                else:
                    tensors[m] = ref.new_zeros(batch, chans[m], *ref.shape[-2:])
            return names, tensors, None
        if static:
            names = [m for m in MODALITIES if m in inputs]
            tensors = dict(inputs)  # the caller (ONNX export) feeds zeros for absent modalities
        else:
            any_present = pres.any(dim=0).tolist()
            names = [m for m in MODALITIES if any_present[INDEX[m]]]
            tensors = {}
            for m in names:
                col = pres[:, INDEX[m]]
                # Zero a modality in the samples that lack it: garbage (even NaN) cannot leak.
                tensors[m] = inputs[m] if bool(col.all()) else torch.where(
                    col.view(batch, 1, 1, 1), inputs[m], torch.zeros_like(inputs[m]))
        mask = pres[:, [INDEX[m] for m in names]]
        if not static and bool(mask.all()):
            mask = None
        return names, tensors, mask

    def _encode(self, inputs: dict[str, torch.Tensor], presence: Any, missing: str = 'remove',
                static: bool = False
                ) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]],
                          list[dict[str, torch.Tensor]]]:
        names, tensors, mask = self._select(inputs, presence, missing, static)
        if self.cfg.rgb_standardize and 'rgb' in tensors:
            tensors = {**tensors, 'rgb': standardize_image(tensors['rgb'])}
        batch = next(iter(tensors.values())).shape[0]
        idx = [INDEX[m] for m in names]
        stems = [self.stems[m](tensors[m]) for m in names]
        per_stage: list[tuple[list[torch.Tensor], torch.Tensor | None]] = []
        if self.cfg.shared_encoder:
            x = torch.cat(stems, 0) if len(stems) > 1 else stems[0]
            for stage in self.encoder:
                x = stage(x)
                per_stage.append((list(x.split(batch)), x))
        else:
            streams = stems
            for s in range(len(self.cfg.widths)):
                streams = [self.encoders[m][s](x) for m, x in zip(names, streams, strict=True)]
                per_stage.append((streams, None))
        features, modality_features, weights_out = [], [], []
        for (parts, stacked), fusion in zip(per_stage, self.fusions, strict=True):
            fused, weights = fusion(parts, stacked, idx, mask)
            features.append(fused)
            modality_features.append(dict(zip(names, parts, strict=True)))
            weights_out.append({m: weights[i] for i, m in enumerate(names)})
        return features, modality_features, weights_out

    def encode(self, inputs: dict[str, torch.Tensor], presence: Any, missing: str = 'remove',
               static: bool = False
               ) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
        """Fused per-stage features and per-modality features.

        static=True (ONNX export): every given modality is computed and masked by `presence`, no
        data-dependent Python branches; absent inputs must be finite (zeros).
        """
        features, modality_features, _ = self._encode(inputs, presence, missing, static)
        return features, modality_features

    # -- decoding
    def head(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Stride-4 logits and decoder features (before upsampling)."""
        dec = self.decoder(features)
        return self.classifier(self.dropout(dec)), dec

    def decode(self, features: list[torch.Tensor], out_hw: tuple[int, int]
               ) -> tuple[torch.Tensor, torch.Tensor]:
        logits, dec = self.head(features)
        return upsample(logits, out_hw), dec

    def forward(self, inputs: dict[str, torch.Tensor], presence: Any, missing: str = 'remove',
                static: bool = False, upsample: bool = True) -> SegOutput:
        """upsample=False keeps the logits at stride 4 (inference: label_maps turns them into
        labels at the input size far cheaper than upsampling every class plane)."""
        out_hw = input_hw(inputs)
        features, modality_features, weights = self._encode(inputs, presence, missing, static)
        if upsample:
            logits, dec = self.decode(features, out_hw)
        else:
            logits, dec = self.head(features)
        return SegOutput(logits, features, modality_features, dec, weights)

    def model_config(self) -> dict[str, Any]:
        return self.cfg.to_dict()

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> FusionSegNet:
        return cls(FusionConfig.from_dict(config))

    def fuse_batchnorm(self) -> FusionSegNet:
        """Fold every BatchNorm into its conv (inference only: the model is put in eval mode)."""
        self.eval()
        fuse_batchnorm(self)
        return self


def fuse_batchnorm(module: nn.Module) -> None:
    """Fold the BatchNorm of every ConvBN under `module` into its conv (eval-time only)."""
    for sub in module.modules():
        if isinstance(sub, ConvBN):
            sub.fuse()


def standardize_image(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """(B, C, H, W) -> per sample and channel zero mean, unit std (an all-zero image stays 0)."""
    mean = x.mean(dim=(2, 3), keepdim=True)
    var = (x - mean).square().mean(dim=(2, 3), keepdim=True)
    return (x - mean) * torch.rsqrt(var + eps)


def input_hw(inputs: dict[str, torch.Tensor]) -> tuple[int, int]:
    if not inputs:
        raise ValueError('no modality tensors given')
    return tuple(next(iter(inputs.values())).shape[-2:])


def upsample(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    return functional.interpolate(x, size=hw, mode='bilinear', align_corners=False)
