"""A short real training run (training.engine.Trainer) that a test kills with SIGKILL.

    python sigkill_train_worker.py RUN_DIR PAUSE

PAUSE says where the run stops to be killed; the worker prints one line when it gets there
(the test's handshake) and then waits for its end:
- `none`: run to the end, export RUN_DIR/model.safetensors, print `DONE`;
- `step:K`: inside the loss of step K (the step half done), print `PAUSED step K`;
- `ckpt:K`: inside the atomic write of checkpoint K, its temporary file written and not yet
  renamed, print `PAUSED ckpt K`;
- `export`: the same inside the write of model.safetensors after training, `PAUSED export`;
- `async:K`: print `AT K` when step K starts and go on: the kill lands wherever the run is then
  (at the latest after training, where the worker waits instead of exporting).
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import torch
from torch import nn

from rmseg_ros import atomic_files
from rmseg_ros.models.checkpoint import save_checkpoint
from training import engine

STEPS = 24
CKPT_EVERY = 4
VAL_EVERY = 6


class ConvSet(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(i)
        return {'x': torch.randn(3, 8, 12, generator=g),
                'labels': torch.randint(0, 2, (8, 12), generator=g), 'index': torch.tensor(i)}


def _pause(text: str) -> None:
    print(text, flush=True)
    threading.Event().wait()  # until SIGKILL


def build_trainer(out: Path, pause: str = 'none') -> engine.Trainer:
    kind, _, at = pause.partition(':')
    at_step = int(at) if at else -1

    def loss_fn(net, batch, ctx):
        if kind == 'async' and ctx.step == at_step:
            print(f'AT {at_step}', flush=True)
        logits = net(batch['x'])
        if kind == 'step' and ctx.step == at_step:
            _pause(f'PAUSED step {at_step}')
        noise = 0.01 * torch.randn(logits.shape, generator=ctx.generator)  # per-step randomness
        return nn.functional.cross_entropy(logits + noise, batch['labels']), {}

    def val_fn(net, step):
        batch = torch.utils.data.default_collate([ConvSet()[i] for i in range(6)])
        return {'val_loss': nn.functional.cross_entropy(net(batch['x']), batch['labels']).item()}

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Dropout(0.3),
                          nn.Conv2d(8, 2, 1))  # dropout: the global RNG must resume exactly
    cfg = engine.RunConfig(steps=STEPS, batch_size=2, num_workers=0, threads=1, log_every=1,
                           ckpt_every=CKPT_EVERY, keep_checkpoints=2, val_every=VAL_EVERY,
                           device='cpu', progress=False)
    return engine.Trainer(model, loss_fn, ConvSet(), cfg, engine.OptimConfig(lr=0.05), out,
                          {'what': 'sigkill-loop'}, val_fn=val_fn)


def main(out: Path, pause: str) -> None:
    kind, _, at = pause.partition(':')
    if kind in ('ckpt', 'export'):
        target = (engine.checkpoint_path(out, int(at)).name if kind == 'ckpt'
                  else 'model.safetensors')

        def hook(tmp: Path) -> None:
            if tmp.name.startswith(f'.{target}.'):
                _pause(f'PAUSED {kind}' + (f' {at}' if at else ''))

        atomic_files.before_replace = hook
    trainer = build_trainer(out, pause)
    trainer.fit()
    if kind == 'async':
        _pause('FINISHED')
    save_checkpoint(out / 'model.safetensors', trainer.model.state_dict(), {'arch': 'test'})
    print('DONE', flush=True)


if __name__ == '__main__':
    main(Path(sys.argv[1]), sys.argv[2])
