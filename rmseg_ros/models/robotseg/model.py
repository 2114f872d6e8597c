"""RobotSeg: the per-frame network, the streaming tracker and checkpoint I/O.

Per frame t (SAM 2 layout, prompt-free):
    image encoder -> F_t (stride 16) + stride-8/4 features
    memory attention over the last K frames' memory -> F'_t
    SEMA: S_t from Canny edges attended with memory, F''_t = F'_t * (1 + alpha * S_t)
    RPG: class tokens + object tokens clustered from memory under past masks
    mask decoder(F''_t, tokens) -> robot mask logits (+ part classes when configured)
    memory encoder(F''_t, predicted mask) -> the memory entry frame t leaves behind
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import nn
from torch.nn import functional

from rmseg_ros.inference.device import resolve_device

from .config import RobotSegConfig
from .decoder import MaskDecoder
from .layers import ConvBNAct, ImageEncoder, sine_position_encoding
from .memory import MemoryAttention, MemoryBank, MemoryEncoder, MemoryEntry
from .rpg import RobotPromptGenerator
from .sema import SEMA, canny_edges

ARCH = 'robotseg'
_STD_EPS = 0.02  # floor of the per-image std (0..1 units): a black frame is not amplified


def prepare_frame(rgb: np.ndarray, hw: tuple[int, int] | None = None, sigma: float = 0.33
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 RGB -> (image (3, h, w) float32 standardised per image and channel,
    edges (1, h, w) float32 in {0, 1}). Per-image standardisation makes the input independent
    of the light level; the same function serves training, evaluation and the node."""
    rgb = np.ascontiguousarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f'expected (H, W, 3) uint8 RGB, got {rgb.shape} {rgb.dtype}')
    if hw is not None and rgb.shape[:2] != tuple(hw):
        rgb = cv2.resize(rgb, (hw[1], hw[0]), interpolation=cv2.INTER_AREA)
    mean, std = cv2.meanStdDev(rgb)
    scale = 1.0 / np.maximum(std.ravel() / 255.0, _STD_EPS) / 255.0
    image = np.empty((3, *rgb.shape[:2]), np.float32)
    for c in range(3):  # (x - mean) / std per channel, written straight into CHW
        np.multiply(rgb[..., c], scale[c], out=image[c], casting='unsafe')
        image[c] -= float(mean[c, 0] * scale[c])
    edges = canny_edges(rgb, sigma)[None].astype(np.float32)
    return image, edges


@dataclass
class FrameOutput:
    logits: torch.Tensor  # (B, outputs, H, W) at the input size; channel 0 = robot
    logits4: torch.Tensor  # (B, outputs, H/4, W/4)
    embedding: torch.Tensor  # (B, N, C) modulated tokens F''_t
    features: torch.Tensor  # (B, N, C) encoder tokens F_t (before memory)
    fine: torch.Tensor  # (B, C8, H/8, W/8) encoder features at stride 8
    hw: tuple[int, int]  # token grid
    memory: MemoryEntry  # what this frame leaves in memory
    structure: torch.Tensor | None  # S_t (B, N, C), None without SEMA


class RobotSegModel(nn.Module):
    def __init__(self, config: RobotSegConfig) -> None:
        super().__init__()
        c = self.config = config
        self.encoder = ImageEncoder(c.widths, c.depths, c.dim)
        self.memory_attention = MemoryAttention(c.dim, c.memory_dim, c.heads,
                                                c.attention_layers, c.memory_size)
        self.sema = SEMA(c.dim, c.memory_dim, c.heads, c.sema_alpha,
                         c.sema_alpha_learnable) if c.use_sema else None
        self.rpg = RobotPromptGenerator(c.dim, c.memory_dim, c.class_tokens, c.object_tokens,
                                        c.mask_threshold, c.cluster_iters, c.prompt_mode)
        self.decoder = MaskDecoder(c.dim, c.heads, c.decoder_layers, c.num_outputs,
                                   c.upsample_dim, c.widths[1], c.widths[2])
        self.memory_encoder = MemoryEncoder(c.dim, c.memory_dim, c.memory_pool)
        self._pos_cache: dict[tuple, torch.Tensor] = {}

    @classmethod
    def from_config(cls, config: dict | RobotSegConfig) -> RobotSegModel:
        if isinstance(config, dict):
            config = RobotSegConfig.from_dict(config)
        return cls(config)

    def model_config(self) -> dict:
        return self.config.to_dict()

    def fuse_batchnorm(self) -> RobotSegModel:
        """Inference form: BatchNorm folded into the convolutions (not trainable afterwards;
        its state dict no longer matches a checkpoint's)."""
        self.eval()
        for module in self.modules():
            if isinstance(module, ConvBNAct):
                module.fuse()
        return self

    def _pos(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        key = (h, w, str(device))
        if key not in self._pos_cache:
            self._pos_cache[key] = sine_position_encoding(h, w, self.config.dim, device)
        return self._pos_cache[key]

    def forward_frame(self, image: torch.Tensor, edges: torch.Tensor,
                      bank: list[MemoryEntry] | MemoryBank) -> FrameOutput:
        """One frame of a batch of streams that share their position in time.

        image (B, 3, H, W) from `prepare_frame`, edges (B, 1, H, W), bank: the streams' last
        K memory entries, oldest first (only the newest `memory_size` are used).
        """
        bank = list(bank)[-self.config.memory_size:]
        b = image.shape[0]
        s4, s8, f = self.encoder(image)
        h, w = f.shape[-2:]
        pos = self._pos(h, w, f.device)
        x = f.flatten(2).transpose(1, 2)
        x1, mem, mem_key = self.memory_attention(
            x, pos, bank, lambda mh, mw: self._pos(mh, mw, f.device))
        structure = None
        if self.sema is not None:
            x2, structure = self.sema(x1, edges, pos, mem, mem_key)
        else:
            x2 = x1
        prompts = self.rpg(bank, b)
        logits4 = self.decoder(x2, pos, (h, w), prompts, s4, s8)
        fmap = x2.transpose(1, 2).reshape(b, -1, h, w)
        entry = self.memory_encoder(fmap, torch.sigmoid(logits4[:, :1]))
        logits = functional.interpolate(logits4, size=image.shape[-2:], mode='bilinear',
                                        align_corners=False)
        return FrameOutput(logits, logits4, x2, x, s8, (h, w), entry, structure)

    def forward(self, images: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
        """A whole clip (B, T, 3, H, W) from an empty memory -> logits (B, T, outputs, H, W)."""
        bank = MemoryBank(self.config.memory_size)
        outs = []
        for t in range(images.shape[1]):
            o = self.forward_frame(images[:, t], edges[:, t], bank)
            bank.append(o.memory)
            outs.append(o.logits)
        return torch.stack(outs, 1)


class RobotSegTracker:
    """Streaming RobotSeg: `reset()`, `step(frame) -> mask`; the state is a MemoryBank of at
    most K entries, whatever the stream's length."""

    def __init__(self, model: RobotSegModel, *, device: str = 'cpu',
                 input_hw: tuple[int, int] | None = None, memory_size: int | None = None,
                 threshold: float = 0.5) -> None:
        k = model.config.memory_size if memory_size is None else int(memory_size)
        if not 1 <= k <= model.config.memory_size:
            raise ValueError(f'memory_size must be in 1..{model.config.memory_size} (the K the '
                             f'model was built with), got {k}')
        self.model = model.fuse_batchnorm()  # a tracker only infers
        self.device = resolve_device(device)
        self.model.to(self.device)
        self.input_hw = (int(input_hw[0]), int(input_hw[1])) if input_hw is not None else None
        self.threshold = float(threshold)
        self.memory = MemoryBank(k)
        self.frames_since_reset = 0
        self.last_prob: np.ndarray | None = None

    def reset(self) -> None:
        self.memory.clear()
        self.frames_since_reset = 0
        self.last_prob = None

    def to(self, device: str) -> RobotSegTracker:
        """Move to another device (memory moves along)."""
        self.device = resolve_device(device)
        self.model.to(self.device)
        moved = MemoryBank(self.memory.capacity)
        for e in self.memory:
            moved.append(MemoryEntry(e.features.to(self.device), e.mask.to(self.device), e.hw))
        self.memory = moved
        return self

    @torch.inference_mode()
    def step_prob(self, rgb: np.ndarray) -> np.ndarray:
        """Frame -> (H, W) float32 robot probability at the frame's own size."""
        image, edges = prepare_frame(rgb, self.input_hw, self.model.config.canny_sigma)
        dev = self.device
        out = self.model.forward_frame(torch.from_numpy(image)[None].to(dev),
                                       torch.from_numpy(edges)[None].to(dev), self.memory)
        self.memory.append(out.memory.detach())
        self.frames_since_reset += 1
        logits = out.logits[:, :1]
        if logits.shape[-2:] != rgb.shape[:2]:
            logits = functional.interpolate(logits, size=rgb.shape[:2], mode='bilinear',
                                            align_corners=False)
        prob = torch.sigmoid(logits)[0, 0].float().cpu().numpy()
        self.last_prob = prob
        return prob

    def step(self, rgb: np.ndarray) -> np.ndarray:
        """Frame -> (H, W) uint8 robot mask in {0, 1}."""
        return (self.step_prob(rgb) > self.threshold).astype(np.uint8)


# ----------------------------------------------------------------------------- checkpoints

def robotseg_metadata(model: RobotSegModel, input_hw: tuple[int, int], extra: dict | None = None
                      ) -> dict:
    names = ['background', 'robot', *model.config.part_classes]
    return {'arch': ARCH, 'model': model.config.to_dict(), 'input_hw': [int(v) for v in input_hw],
            'classes': names, 'extra': dict(extra or {})}


def save_robotseg(path: str | os.PathLike, model: RobotSegModel, input_hw: tuple[int, int],
                  extra: dict | None = None) -> None:
    """Deployable checkpoint (safetensors + JSON metadata, written atomically)."""
    from rmseg_ros.models.checkpoint import save_checkpoint

    save_checkpoint(path, model.state_dict(), robotseg_metadata(model, input_hw, extra))


def load_robotseg(path: str | os.PathLike, device: str = 'cpu'
                  ) -> tuple[RobotSegModel, dict]:
    """Rebuild the model a RobotSeg checkpoint describes and load its weights strictly."""
    from rmseg_ros.models.checkpoint import load_checkpoint

    state, meta = load_checkpoint(path)
    if meta.get('arch') != ARCH:
        raise ValueError(f'{path}: not a RobotSeg checkpoint (arch {meta.get("arch")!r})')
    model = RobotSegModel.from_config(meta['model'])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f'{path}: weights do not match the RobotSeg config in its metadata: '
                         f'{exc}') from exc
    return model.to(resolve_device(device)).eval(), meta
