"""`rmseg-train robult [--config FILE] [--out DIR] [--smoke] [options]` (options: --help)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from rmseg_ros.config import merge_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='rmseg-train robult',
        description='Semi-supervised training with the Robult soft-PU contrastive and latent '
                    'reconstruction losses (training/configs/robult.yaml).')
    parser.add_argument('--label-fraction', type=float,
                        help='fraction of the labelled frames that keep their labels')
    parser.add_argument('--label-seed', type=int, help='seed of the labelled-frame selection')
    parser.add_argument('--label-unit', choices=('frame', 'recording'),
                        help='label a fraction of the frames (spread over every recording) or '
                             'of the recordings (each in full)')
    parser.add_argument('--unlabelled-per-labelled', type=int,
                        help='unlabelled frames drawn with each labelled frame (0: none)')
    parser.add_argument('--no-robult', action='store_true',
                        help='supervised-only baseline (same labelled frames and steps)')
    parser.add_argument('--teacher', help='RMMSS robust stage as the base objective: frozen '
                        'teacher checkpoint (pixel KL + HPDM; init from it)')
    parser.add_argument('--steps', type=int, help='training steps (overrides the config)')
    parser.add_argument('--device', help='auto | cpu | cuda')
    parser.add_argument('--evaluate', action='store_true',
                        help='score the 15 subsets on evaluate.shards afterwards (eval.json)')
    parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                        help='any config value, e.g. --set data.downscale=2 (repeatable)')
    return parser


def overrides_from(opts: argparse.Namespace) -> dict[str, Any]:
    from .config import RobultConfig, parse_override

    data = {k: v for k, v in (('label_fraction', opts.label_fraction),
                              ('label_seed', opts.label_seed),
                              ('label_unit', opts.label_unit),
                              ('unlabelled_per_labelled', opts.unlabelled_per_labelled))
            if v is not None}
    named = [({'data': data}, data), ({'robult': {'enabled': False}}, opts.no_robult),
             ({'rmmss': {'teacher_checkpoint': opts.teacher}}, opts.teacher),
             ({'run': {'steps': opts.steps}}, opts.steps),
             ({'run': {'device': opts.device}}, opts.device),
             ({'evaluate': {'enabled': True}}, opts.evaluate)]
    o: dict[str, Any] = {}
    for item in [parse_override(i) for i in opts.set] + [x for x, given in named if given]:
        o = merge_config(o, item, RobultConfig)
    return o


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from .config import load_config
    from .stage import run_stage

    logging.basicConfig(level=logging.INFO, format='%(name)s: %(message)s', stream=sys.stderr)
    opts = build_parser().parse_args(extra[1:] if extra[:1] == ['--'] else extra)
    cfg, resolved = load_config(args.config, args.smoke, overrides_from(opts))
    out = Path(args.out) if args.out else cfg.run_dir()
    return run_stage(cfg, resolved, out)
