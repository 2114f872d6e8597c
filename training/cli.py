"""`rmseg-train <stage>`: one command for every offline pipeline (DESIGN.md section 6).

Stages are registered in STAGES as `module:function` strings so that importing the CLI stays
cheap (no torch import for `--help`) and a stage that has not landed fails with a clear message.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# stage -> (implementation 'module:function' or None while not built, one-line description)
STAGES: dict[str, tuple[str | None, str]] = {
    'sim': ('training.sim.cli:run', 'render four-modality bags with ground truth in the simulator'),
    'dataset': ('training.data.cli:run', 'turn bags into cached, synchronised training shards'),
    'teacher': ('training.rmmss.stages:run_teacher',
                'train the full-modality teacher (RMMSS stage 1)'),
    'robust': ('training.rmmss.stages:run_robust',
               'train the robust model with modality dropout + HPDM'),
    'fsm': ('training.rmmss.stages:run_fsm',
            'train the Feature Selection Module over frozen teacher + robust model'),
    'robult': ('training.robult.cli:run',
               'train with the Robult soft-PU contrastive + reconstruction losses'),
    'rss': ('training.rss.cli:run', 'train segmentation from rewards (RSS)'),
    'robotseg': ('training.robotseg.cli:run',
                 'train the RobotSeg video model from first-frame masks'),
    'robot-masks': ('training.robotseg.robot_masks:run',
                    'render labels/robot masks of bags from URDF, joint_states, TF, CameraInfo'),
    'evaluate': ('training.evaluate:run',
                 'evaluate a checkpoint over the 15 modality subsets and failure cases'),
    'export': ('training.export:run',
               'export a deployable checkpoint (safetensors + JSON metadata)'),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='rmseg-train',
        description='Offline training pipelines of rmseg_ros, all reading rosbag2 recordings.',
    )
    sub = parser.add_subparsers(dest='stage', required=True, metavar='STAGE')
    for name, (_, help_text) in STAGES.items():
        # -h reaches the stage's own parser too (main), which lists the stage's options
        stage = sub.add_parser(name, help=help_text, description=help_text, add_help=False)
        stage.add_argument('-h', '--help', action='store_true',
                           help='show the common and the stage\'s own options, then exit')
        stage.add_argument('--config', help='YAML config of the stage')
        stage.add_argument('--out', help='run directory (config, metrics, checkpoints)')
        stage.add_argument('--smoke', action='store_true', help='seconds-long run for tests')
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.help:  # common options first, then the stage's parser prints its own and exits
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        print(sub.choices[args.stage].format_help())
        print(f'options of rmseg-train {args.stage}:')
        sys.stdout.flush()
        extra = ['--help']
    from rmseg_ros.runtime import tune_malloc

    tune_malloc()
    target, _ = STAGES[args.stage]
    if target is None:
        sys.stderr.write(f'rmseg-train {args.stage}: not built yet\n')
        return 2
    module_name, func_name = target.split(':')
    return int(getattr(importlib.import_module(module_name), func_name)(args, extra) or 0)


if __name__ == '__main__':
    sys.exit(main())
