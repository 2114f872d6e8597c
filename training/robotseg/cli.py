"""Entry of `rmseg-train robotseg` (registered in training/cli.py): see training.robotseg.train.

    rmseg-train robotseg [--config FILE] [--out DIR] [--smoke] [--variant NAME] [--steps N]
                         [--device auto|cpu|cuda] [--train GLOB ...]
"""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from .train import run as train_run

    return train_run(args, extra)
