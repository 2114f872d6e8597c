"""torchrun worker of test/test_rss_syncan.py: one RSS policy-gradient step of a small
FusionSegNet under DDP (gloo), each rank holding its contiguous part of a fixed batch.

  torchrun --nproc_per_node 2 test/rss_syncan_worker.py OUT_DIR

For every case it writes OUT_DIR/<case>_rank<r>.npz with the rank's advantages (of its samples)
and the model's gradients after DDP's all-reduce. The test computes the same step in one process
on the whole batch (`single_process`) and compares.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from rmseg_ros.modalities import MODALITIES
from rmseg_ros.models.fusion import FusionConfig, FusionSegNet
from training.rss.advantages import sample_seed
from training.rss.config import MethodConfig, PSRConfig
from training.rss.rewards import miou_reward
from training.rss.trainer import image_level_step, pixel_level_step

BATCH, CLASSES, HW, STEP = 4, 5, (32, 48), 7
CASES = {  # name -> method; the one-process reference of an unsynchronised run uses chunks
    'pixel_syncan': MethodConfig(level='pixel', samples=3, sync_an=True),
    'pixel_no_syncan': MethodConfig(level='pixel', samples=3, sync_an=False),
    'image_batch_syncan': MethodConfig(level='image', samples=3, sync_an=True, group='batch',
                                       psr=PSRConfig(scales=[0.5])),
}


def build() -> tuple[FusionSegNet, dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """The model (float64, eval mode: BatchNorm statistics are not per-process) and the batch;
    labels with a different number of ignored pixels per sample (unequal counts per rank)."""
    torch.manual_seed(0)
    net = FusionSegNet(FusionConfig(num_classes=CLASSES, widths=(8, 16, 16, 16),
                                    depths=(1, 1, 1, 1), decoder_dim=8, attention_heads=2))
    net = net.double().eval()
    g = torch.Generator().manual_seed(1)
    chans = {'rgb': 3, 'depth': 2, 'lidar': 3, 'event': 5}
    inputs = {m: torch.randn(BATCH, chans[m], *HW, generator=g, dtype=torch.float64)
              for m in MODALITIES}
    labels = torch.randint(0, CLASSES, (BATCH, *HW), generator=g)
    labels[0, :5] = 255
    labels[3, :2, :7] = 255
    presence = torch.ones(BATCH, len(MODALITIES), dtype=torch.bool)
    return net, inputs, labels, presence


def policy_step(net, inputs, labels, presence, rows: slice, method: MethodConfig):
    """Loss and advantages of the samples `rows` of the batch (global sample ids for seeds)."""
    index = list(range(BATCH))[rows]
    logits = net({m: x[rows] for m, x in inputs.items()}, presence[rows]).logits
    if method.level == 'pixel':
        return pixel_level_step(logits, labels[rows], [sample_seed(0, STEP, i) for i in index],
                                method)
    return image_level_step(logits, {'labels': labels[rows]}, method.psr.scales,
                            lambda s: [sample_seed(0, STEP, i, s) for i in index],
                            lambda a, b: miou_reward(a, b['labels'], CLASSES), method)


def gradients(net: torch.nn.Module) -> np.ndarray:
    return torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel(),
                      dtype=p.dtype) for p in net.parameters()]).numpy()


def single_process(method: MethodConfig, chunks: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(advantages, gradients) of one process on the whole batch."""
    net, inputs, labels, presence = build()
    m = MethodConfig(**{**method.__dict__, 'virtual_processes': chunks})
    step = policy_step(net, inputs, labels, presence, slice(None), m)
    step.loss.backward()
    return step.advantages.detach().numpy(), gradients(net)


def main(out: Path) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group('gloo')
    rank, world = dist.get_rank(), dist.get_world_size()
    per = BATCH // world
    rows = slice(rank * per, (rank + 1) * per)
    for name, method in CASES.items():
        net, inputs, labels, presence = build()
        ddp = DistributedDataParallel(net)
        step = policy_step(ddp, inputs, labels, presence, rows, method)
        step.loss.backward()
        np.savez(out / f'{name}_rank{rank}.npz', advantages=step.advantages.detach().numpy(),
                 grads=gradients(net))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == '__main__':
    main(Path(sys.argv[1]))
