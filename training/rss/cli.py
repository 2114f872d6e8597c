"""`rmseg-train rss`: train a segmentation network from rewards (RSS).

  rmseg-train rss --config training/configs/rss.yaml [--out DIR] [--smoke] -- \
      [--level pixel|image|supervised] [--init CKPT] [--steps N] [--lr-factor F] \
      [--set method.psd=false --set method.psr.scales=[0.125]]

Multi-process (SyncAN across processes): torchrun --nproc_per_node N -m training.cli rss ...
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from training.engine import distributed, parse_set

from .config import LEVELS, load_config


def dotted(assignments: list[str]) -> dict[str, Any]:
    """['a.b=1', 'c=[x, y]'] -> {'a': {'b': 1}, 'c': ['x', 'y']} (values parsed as YAML)."""
    return parse_set(assignments)


def parse_overrides(extra: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog='rmseg-train rss',
                                     description='Train segmentation from rewards (RSS).')
    parser.add_argument('--level', choices=LEVELS, help='reward granularity (method.level)')
    parser.add_argument('--init', help='cold start: deployable checkpoint to start from')
    parser.add_argument('--steps', type=int, help='training steps (run.steps)')
    parser.add_argument('--lr-factor', type=float, help='last-layer learning-rate factor')
    parser.add_argument('--device', help='auto | cpu | cuda')
    parser.add_argument('--name', help='run name (directory under out_root)')
    parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                        help='any config value, dotted key, YAML value (repeatable)')
    opts = parser.parse_args([a for a in extra if a != '--'])
    named = [f'{key}={value}' for value, key in (
        (opts.level, 'method.level'), (opts.init, 'init_checkpoint'), (opts.steps, 'run.steps'),
        (opts.lr_factor, 'last_layer_lr_factor'), (opts.device, 'run.device'),
        (opts.name, 'name')) if value is not None]
    return dotted(opts.set + named)  # the named options win over --set of the same key


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from .trainer import train

    logging.basicConfig(level=logging.INFO, format='%(name)s: %(message)s', stream=sys.stderr)
    cfg, resolved = load_config(args.config, args.smoke, parse_overrides(extra))
    out = Path(args.out) if args.out else cfg.run_dir()
    with distributed(cfg.run.device) as ctx:
        summary = train(cfg, resolved, out, ctx)
    if summary:
        print(json.dumps({k: summary[k] for k in ('name', 'step', 'train_seconds', 'model')}
                         | {'test_miou': summary['test']['miou']}, indent=1))
    return 0
