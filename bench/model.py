"""Forward-pass timing of the deployed RMMSS student (FSMStudent) and of one FusionSegNet.

A forward here is what the Segmenter does per frame: input tensors -> stride-4 logits -> labels
and confidence at the input size (label_maps.labels_from_logits, included in every figure).
The model size is the shipped one (the `model` section of training/configs/rmmss.yaml) unless
`--widths` / `--depths` / `--decoder-dim` say otherwise (the size A/B of docs/results.md).
Random weights, all four modalities, batch 1, eval, no grad, BatchNorm folded and channels-last
memory (the Segmenter's CPU path), `--threads` torch threads (default 2). The models run in
alternating blocks of 10 consecutive runs (warm caches as in a node, the same machine load for
all); medians of `--runs` runs after `--warmup` runs. The machine is shared and virtualised,
so the minimum and the 90th percentile are printed too, plus `calibration_matmul_ms` (a fixed
512^3 matmul timed in the same run) to compare runs taken under different load. onnxruntime
figures use the graph the Segmenter exports (four modality inputs + presence -> stride-4
logits), one session alive at a time.

Prints one `figure: value unit` line per figure; exits 1 if it could not measure.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _stats(ts: list[float]) -> tuple[float, float, float]:
    ts = sorted(ts)
    p90 = ts[min(len(ts) - 1, int(0.9 * len(ts)))]
    return statistics.median(ts) * 1e3, ts[0] * 1e3, p90 * 1e3


def _blocks(fns: dict[str, Callable[[], object]], runs: int, warmup: int, block: int = 10
            ) -> dict[str, list[float]]:
    """Alternate blocks of `block` consecutive runs per function: consecutive runs keep caches
    warm as in a node that runs one model per frame, alternation spreads load changes of the
    shared machine over all functions."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    while any(len(t) < runs for t in times.values()):
        for name, fn in fns.items():
            fn()  # re-warm after the other functions ran
            for _ in range(min(block, runs - len(times[name]))):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--runs', type=int, default=50, help='timed runs (>= 30)')
    parser.add_argument('--warmup', type=int, default=5)
    parser.add_argument('--threads', type=int, default=2, help='torch / onnxruntime threads')
    parser.add_argument('--height', type=int, default=240)
    parser.add_argument('--width', type=int, default=320)
    parser.add_argument('--classes', type=int, default=12)
    parser.add_argument('--widths', type=int, nargs=4, default=None, metavar='W',
                        help='stage widths (default: the `model` section of --config)')
    parser.add_argument('--depths', type=int, nargs=4, default=None, metavar='D',
                        help='blocks per stage (default: --config)')
    parser.add_argument('--decoder-dim', type=int, default=None,
                        help='decoder channels (default: --config)')
    parser.add_argument('--config', default=str(ROOT / 'training/configs/rmmss.yaml'),
                        help='training config whose model size is timed (the shipped student)')
    parser.add_argument('--no-onnx', action='store_true', help='skip the onnxruntime figures')
    parser.add_argument('--compare-encoders', action='store_true',
                        help='also time one FusionSegNet with per-modality encoders')
    args = parser.parse_args(argv)
    if args.runs < 30:
        parser.error('--runs must be >= 30')

    try:
        import numpy as np
        import torch

        from rmseg_ros.inference.label_maps import labels_from_logits
        from rmseg_ros.modalities import input_channels
        from rmseg_ros.models.fsm import FSMStudent
        from rmseg_ros.models.fusion import FusionConfig, FusionSegNet

        torch.set_num_threads(args.threads)
        torch.manual_seed(0)
        import yaml

        shipped = yaml.safe_load(Path(args.config).read_text()).get('model') or {}
        size = {k: shipped[k] for k in ('widths', 'depths', 'decoder_dim', 'attention_heads')
                if k in shipped}
        size.update({k: v for k, v in (('widths', args.widths), ('depths', args.depths),
                                       ('decoder_dim', args.decoder_dim)) if v is not None})
        cfg = FusionConfig(num_classes=args.classes, **size)

        def deployable(model: torch.nn.Module) -> torch.nn.Module:
            return model.fuse_batchnorm().to(memory_format=torch.channels_last)

        student = deployable(FSMStudent(FusionSegNet(cfg), FusionSegNet(cfg)))
        single = deployable(FusionSegNet(cfg))
        hw = (args.height, args.width)
        inputs = {m: torch.randn(1, c, *hw) for m, c in input_channels(cfg.event_bins).items()}
        # the Segmenter hands channels-last inputs to the model on CPU
        cl_inputs = {m: t.contiguous(memory_format=torch.channels_last) for m, t in inputs.items()}
        presence = torch.ones(4, dtype=torch.bool)
        a = torch.randn(512, 512)
        def labels(model: torch.nn.Module) -> Callable[[], object]:
            return lambda: labels_from_logits(
                model(cl_inputs, presence, upsample=False).logits[0].numpy(), hw)

        fns: dict[str, Callable[[], object]] = {
            'student': labels(student),
            'fusion': labels(single),
            'calibration': lambda: a @ a,
        }
        if args.compare_encoders:
            separate = deployable(FusionSegNet(FusionConfig(num_classes=args.classes,
                                                            shared_encoder=False, **size)))
            fns['fusion_separate'] = labels(separate)
        with torch.no_grad():
            times = _blocks(fns, args.runs, args.warmup)

        onnx_times: dict[str, list[float]] = {}
        if not args.no_onnx:
            from rmseg_ros.inference.segmenter import export_onnx, onnxruntime_offline

            ort = onnxruntime_offline()  # no telemetry from the benchmark either

            feed = {m: t.numpy() for m, t in inputs.items()}
            feed['presence'] = np.ones((1, 4), np.float32)
            with tempfile.TemporaryDirectory() as tmp:
                for name, model in (('student', FSMStudent(FusionSegNet(cfg), FusionSegNet(cfg))),
                                    ('fusion', FusionSegNet(cfg))):
                    path = export_onnx(model.eval(), Path(tmp) / f'{name}.onnx', hw,
                                       cfg.event_bins)
                    opts = ort.SessionOptions()
                    opts.intra_op_num_threads = args.threads
                    opts.inter_op_num_threads = 1
                    # one session alive at a time: an idle session's spinning threads would
                    # steal the cores from the one being timed
                    session = ort.InferenceSession(str(path), opts,
                                                   providers=['CPUExecutionProvider'])
                    def run(s: object = session) -> object:
                        return labels_from_logits(s.run(None, feed)[0][0], hw)

                    onnx_times.update(_blocks({name: run}, args.runs, args.warmup))
                    del session
    except Exception as exc:  # report, exit non-zero: the figure could not be measured
        print(f'error: {type(exc).__name__}: {exc}', file=sys.stderr)
        return 1

    def params(model: torch.nn.Module) -> float:
        return sum(p.numel() for p in model.parameters()) / 1e6

    print(f'{args.runs} runs after {args.warmup} warm-up, {args.threads} threads, '
          f'{hw[0]}x{hw[1]}, widths {list(cfg.widths)}, depths {list(cfg.depths)}, decoder '
          f'{cfg.decoder_dim}, all four modalities, batch 1; load average '
          f'{os.getloadavg()[0]:.2f}', file=sys.stderr)
    med, lo, p90 = _stats(times['student'])
    print(f'student_forward_ms: {med:.2f} ms')
    print(f'student_forward_min_ms: {lo:.2f} ms')
    print(f'student_forward_p90_ms: {p90:.2f} ms')
    med, lo, p90 = _stats(times['fusion'])
    print(f'fusion_forward_ms: {med:.2f} ms')
    print(f'fusion_forward_min_ms: {lo:.2f} ms')
    if 'fusion_separate' in times:
        print(f'fusion_separate_encoders_forward_ms: {_stats(times["fusion_separate"])[0]:.2f} ms')
    if onnx_times:
        med, lo, _ = _stats(onnx_times['student'])
        print(f'student_forward_onnx_ms: {med:.2f} ms')
        print(f'student_forward_onnx_min_ms: {lo:.2f} ms')
        print(f'fusion_forward_onnx_ms: {_stats(onnx_times["fusion"])[0]:.2f} ms')
    print(f'calibration_matmul_ms: {_stats(times["calibration"])[0]:.3f} ms')
    print(f'student_params_m: {params(student):.3f} M')
    trainable = sum(p.numel() for p in student.trainable_parameters()) / 1e6
    print(f'student_trainable_params_m: {trainable:.3f} M')
    print(f'fusion_params_m: {params(single):.3f} M')
    return 0


if __name__ == '__main__':
    sys.exit(main())
