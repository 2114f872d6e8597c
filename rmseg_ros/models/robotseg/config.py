"""RobotSeg model configuration (a plain dataclass, stored in every checkpoint's metadata)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

PROMPT_MODES = ('rpg', 'random')


@dataclass
class RobotSegConfig:
    """Sizes of the CPU-budget RobotSeg (SAM 2 layout, a few hundred k parameters).

    The image encoder has stride 16; the memory, SEMA and the prompt tokens live on that grid,
    the mask decoder upsamples with the encoder's stride-8 and stride-4 features.
    """

    widths: tuple[int, ...] = (16, 24, 48, 96)  # encoder channels at strides 2, 4, 8, 16
    depths: tuple[int, ...] = (1, 1, 2, 2)  # blocks per stage (the first is the stride one)
    dim: int = 64  # token width of memory attention, SEMA and the mask decoder
    memory_dim: int = 32  # width of one memory token
    memory_size: int = 7  # K: frames kept in memory (SAM 2 default 7)
    memory_pool: int = 2  # memory tokens are average-pooled by this factor (CPU budget)
    heads: int = 4
    attention_layers: int = 2  # memory attention layers
    decoder_layers: int = 1  # two-way transformer layers of the mask decoder
    upsample_dim: int = 16  # channels of the stride-4 mask embedding
    # SEMA: F'' = F' * (1 + alpha * S_t)
    use_sema: bool = True
    sema_alpha: float = 0.5  # initial alpha
    sema_alpha_learnable: bool = True
    canny_sigma: float = 0.33  # Canny thresholds (1 -/+ sigma) * median grey level
    # RPG: class tokens + object tokens clustered from memory under past masks
    prompt_mode: str = 'rpg'  # rpg | random (the "without RPG" ablation)
    class_tokens: tuple[str, ...] = ('arm', 'gripper', 'robot')
    object_tokens: int = 4  # clusters of masked memory features
    cluster_iters: int = 3
    mask_threshold: float = 0.5  # past-mask probability above which memory is "robot"
    # outputs: the robot mask first, then optional part classes (only if trained with them)
    part_classes: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes kept in checkpoints

    def __post_init__(self) -> None:
        self.widths = tuple(int(w) for w in self.widths)
        self.depths = tuple(int(d) for d in self.depths)
        self.class_tokens = tuple(str(c) for c in self.class_tokens)
        self.part_classes = tuple(str(c) for c in self.part_classes)
        if len(self.widths) != 4 or len(self.depths) != 4 or min(self.depths) < 1:
            raise ValueError('widths and depths need 4 entries (strides 2, 4, 8, 16), '
                             'depths >= 1')
        if self.dim % self.heads:
            raise ValueError(f'dim {self.dim} must be divisible by heads {self.heads}')
        if self.memory_size < 1:
            raise ValueError(f'memory_size (K) must be >= 1, got {self.memory_size}')
        if self.prompt_mode not in PROMPT_MODES:
            raise ValueError(f'prompt_mode must be one of {PROMPT_MODES}, got '
                             f'{self.prompt_mode!r}')
        if self.memory_pool < 1:
            raise ValueError(f'memory_pool must be >= 1, got {self.memory_pool}')
        if self.object_tokens < 0:
            raise ValueError('object_tokens must be >= 0')

    @property
    def num_outputs(self) -> int:
        return 1 + len(self.part_classes)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ('widths', 'depths', 'class_tokens', 'part_classes'):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> RobotSegConfig:
        d = dict(d or {})
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f'unknown RobotSegConfig keys {sorted(unknown)}')
        return cls(**d)
