"""`rmseg-train evaluate`: mIoU of a checkpoint over the 15 modality subsets, under missing,
partly missing and noisy modalities, and under sensor failures.

IoU convention: one confusion matrix is accumulated over the whole split (pixels labelled 255
are ignored); IoU_k = TP / (TP + FP + FN); the mean is taken over the classes that occur in the
ground truth or in the prediction of that split (TP + FP + FN > 0); other classes are reported as
null, never counted as 0.

Cases (the protocol of the any-modal segmentation line of work):
- EMM, for each non-empty subset S: modalities outside S are missing. Two semantics:
  'remove' (presence False: the model leaves them out of fusion) and 'zero' (their tensors are
  zeros and fused like present ones: the naive baseline). Mean over the 15 subsets.
- RMM, for each S != all: modalities outside S are present but a random 50% of their pixels are
  zeroed (RGB: black). Mean over the 14 subsets.
- NM, for each S != all: modalities outside S are present but noisy (Gaussian + salt-and-pepper).
- failures, all modalities present: motion blur, over-/under-exposure, LiDAR jitter, low-resolution
  events, as defined in training.data.tensor_failures (shared with the training augmentations).
A sample whose recording lacks every modality of S is left out of that subset's score.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from rmseg_ros.config import from_dict
from rmseg_ros.frontend.preprocess import FrontendConfig, normalize_rgb
from rmseg_ros.label_metrics import confusion_shares, iou_per_class
from rmseg_ros.modalities import INDEX, MODALITIES, all_subsets, presence_from_names, subset_name
from training import failures
from training.data import tensor_failures
from training.data.tensor_failures import TENSOR_FAILURES
from training.results import confusion_markdown

log = logging.getLogger('rmseg-train.evaluate')

IGNORE = 255
IOU_CONVENTION = ('confusion matrix accumulated over the whole split (label 255 ignored); '
                  'IoU = TP / (TP + FP + FN); mean over classes present in ground truth or '
                  'prediction (others null, not 0)')
MISSING_SEMANTICS = {
    'remove': 'absent modalities are excluded from fusion (presence False, masked softmax)',
    'zero': 'absent modalities are fed as zero tensors and fused like present ones',
}
SUBSETS: dict[str, tuple[str, ...]] = {subset_name(s): s for s in all_subsets()}
FULL = subset_name(MODALITIES)
# what `--cases` selects (forward passes per batch: full 1, subsets 15 per missing mode,
# rmm 14, nm 14, failures 1 per failure); all of them is the complete protocol
CASES = ('full', 'subsets', 'rmm', 'nm', 'failures')
FAILURE_CASES = ('motion_blur', 'over_exposure', 'under_exposure', 'lidar_jitter',
                 'low_res_events')
VALUE_RANGE = {'depth': (0.0, 1.0), 'lidar': (0.0, 1.0), 'event': (-1.0, 1.0)}


# ----------------------------------------------------------------------------- metrics

def confusion_matrix(pred: torch.Tensor, labels: torch.Tensor, num_classes: int,
                     ignore_index: int = IGNORE) -> torch.Tensor:
    """(K, K) int64 counts, rows = ground truth, columns = prediction."""
    valid = (labels != ignore_index) & (labels >= 0) & (labels < num_classes)
    idx = labels[valid].long() * num_classes + pred[valid].long()
    return torch.bincount(idx.cpu(), minlength=num_classes * num_classes).reshape(
        num_classes, num_classes)


def mean_iou(cm: torch.Tensor | np.ndarray) -> float:
    iou = iou_per_class(cm)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float('nan')


def _score(cm: torch.Tensor, classes: Sequence[str]) -> dict[str, Any]:
    iou = iou_per_class(cm)
    return {'miou': _num(mean_iou(cm)), 'pixels': int(cm.sum()),
            'iou': {c: _num(v) for c, v in zip(classes, iou, strict=True)}}


def _num(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), 6)


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return round(float(np.mean(vals)), 6) if vals else None


# ----------------------------------------------------------------------------- corruptions

def _rgb_to_uint8(rgb: torch.Tensor, fe: FrontendConfig) -> np.ndarray:
    """Normalised (3, H, W) -> the (H, W, 3) uint8 image it came from."""
    std = torch.tensor(fe.rgb_std, dtype=rgb.dtype, device=rgb.device).view(3, 1, 1)
    mean = torch.tensor(fe.rgb_mean, dtype=rgb.dtype, device=rgb.device).view(3, 1, 1)
    img = ((rgb * std + mean) * 255.0).round().clamp(0, 255)
    return img.permute(1, 2, 0).to(torch.uint8).cpu().numpy()


def _to_row(m: str, x: torch.Tensor, fe: FrontendConfig) -> np.ndarray:
    """A model tensor as the cached-sample array training.data.tensor_failures works on."""
    return _rgb_to_uint8(x, fe) if m == 'rgb' else x.detach().cpu().numpy().astype(np.float32)


def _from_row(m: str, a: np.ndarray, fe: FrontendConfig, like: torch.Tensor) -> torch.Tensor:
    t = normalize_rgb(np.ascontiguousarray(a), fe) if m == 'rgb' else np.ascontiguousarray(a)
    return torch.from_numpy(t).to(like.device, like.dtype)


def _noise(x: torch.Tensor, m: str, rng: np.random.Generator, sigma: float, sp: float
           ) -> torch.Tensor:
    lo, hi = VALUE_RANGE[m]
    out = x + torch.from_numpy(rng.normal(0.0, sigma, x.shape)).to(x)
    hit = torch.from_numpy(rng.random(x.shape[-2:]) < sp).to(x.device)
    salt = torch.from_numpy(rng.random(x.shape[-2:]) < 0.5).to(x.device)
    out = torch.where(hit, torch.where(salt, torch.full_like(out, hi), torch.full_like(out, lo)),
                      out)
    return out.clamp(lo, hi)


@dataclass
class Corrupter:
    """Per-sample corruptions of model inputs, seeded by (seed, case, sample index).

    Sensor failures and RMM's pixel loss are those of training.data.tensor_failures (the same
    definitions as the training augmentations), applied to the sample's cached-form arrays.
    """

    frontend: FrontendConfig
    seed: int = 0
    rmm_fraction: float = 0.5
    nm_sigma: float = 0.1
    nm_salt_pepper: float = 0.05

    def _rng(self, case: str, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, sum(map(ord, case)) * 7919 + len(case), index])

    def failure(self, name: str, m: str, x: torch.Tensor, index: int) -> torch.Tensor:
        """Failure `name` if it concerns modality m, else x unchanged."""
        if failures.FAILURES.get(name) != m:
            return x
        row = {m: _to_row(m, x, self.frontend)}
        TENSOR_FAILURES[name](row, self._rng(name, index), self.frontend)
        return _from_row(m, row[m], self.frontend, x)

    def rmm(self, m: str, x: torch.Tensor, index: int) -> torch.Tensor:
        """A random `rmm_fraction` of the pixels zeroed (RGB: black)."""
        row = {m: _to_row(m, x, self.frontend)}
        tensor_failures.pixel_loss(row, self._rng(f'rmm-{m}', index), self.frontend,
                                   modality=m, fraction=self.rmm_fraction)
        return _from_row(m, row[m], self.frontend, x)

    def nm(self, m: str, x: torch.Tensor, index: int) -> torch.Tensor:
        """Gaussian noise + salt-and-pepper (RGB: on the 8-bit image, sigma x 255)."""
        rng = self._rng(f'nm-{m}', index)
        if m == 'rgb':
            img = failures.rgb_noise(_rgb_to_uint8(x, self.frontend), rng,
                                     sigma=self.nm_sigma * 255.0,
                                     salt_pepper=self.nm_salt_pepper)
            return _from_row(m, img, self.frontend, x)
        return _noise(x, m, rng, self.nm_sigma, self.nm_salt_pepper)


def _per_sample(batch: dict, modalities: Sequence[str],
                fn: Callable[[str, torch.Tensor, int], torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inputs with `fn` applied to the listed modalities of every sample that has them."""
    inputs = {m: batch[m] for m in MODALITIES}
    for m in modalities:
        col = batch['presence'][:, INDEX[m]]
        rows = [fn(m, batch[m][i], int(batch['index'][i])) if bool(col[i]) else batch[m][i]
                for i in range(len(col))]
        inputs[m] = torch.stack(rows)
    return inputs


# ----------------------------------------------------------------------------- evaluation

@torch.no_grad()
def _accumulate(model: nn.Module, inputs: dict[str, torch.Tensor], presence: torch.Tensor,
                labels: torch.Tensor, missing: str, cm: torch.Tensor) -> None:
    keep = presence.any(1)
    if not bool(keep.any()):
        return
    if not bool(keep.all()):
        inputs = {m: x[keep] for m, x in inputs.items()}
        presence, labels = presence[keep], labels[keep]
    out = model(inputs, presence, missing=missing)
    cm += confusion_matrix(out.logits.argmax(1), labels, cm.shape[0])


def _loader(dataset, batch_size: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)


@torch.no_grad()
def subset_mious(model: nn.Module, dataset, subsets: Sequence[str], num_classes: int,
                 device: torch.device, batch_size: int = 4, missing: str = 'remove',
                 classes: Sequence[str] | None = None,
                 class_subsets: Sequence[str] | None = None) -> dict[str, float | None]:
    """mIoU per named subset and their mean (the validation score during training); with
    `classes`, also the IoU of each class (`iou_<subset>_<class>`) in each of `class_subsets`
    (default: the first subset)."""
    cms = {s: torch.zeros(num_classes, num_classes, dtype=torch.int64) for s in subsets}
    for batch in _loader(dataset, batch_size):
        batch = {k: v.to(device) for k, v in batch.items()}
        inputs = {m: batch[m] for m in MODALITIES}
        for s in subsets:
            mask = torch.from_numpy(presence_from_names(SUBSETS[s])).to(device)
            _accumulate(model, inputs, batch['presence'] & mask, batch['labels'], missing,
                        cms[s])
    out: dict[str, float | None] = {f'miou_{s}': _num(mean_iou(cm)) for s, cm in cms.items()}
    out['miou_mean'] = _mean(list(out.values()))
    if classes is not None and subsets:
        for s in (subsets[:1] if class_subsets is None else class_subsets):
            for c, v in zip(classes, iou_per_class(cms[s]), strict=True):
                out[f'iou_{s}_{c}'] = _num(v)
    return out


@torch.no_grad()
def evaluate_model(model: nn.Module, dataset, classes: Sequence[str], frontend: FrontendConfig,
                   device: torch.device, *, batch_size: int = 4,
                   missing_modes: Sequence[str] = ('remove', 'zero'),
                   failure_cases: Sequence[str] = FAILURE_CASES, rmm_fraction: float = 0.5,
                   nm_sigma: float = 0.1, nm_salt_pepper: float = 0.05, seed: int = 0,
                   progress: bool = True, cases: Sequence[str] = CASES) -> dict[str, Any]:
    """The selected `cases` (CASES; the module docstring defines each) over `dataset` (a
    ShardDataset without augmentation). Cases not selected are absent from the result ('full'
    alone scores only the all-modality subset, with the first missing mode)."""
    unknown_cases = set(cases) - set(CASES)
    if unknown_cases:
        raise ValueError(f'unknown cases {sorted(unknown_cases)}; known: {list(CASES)}')
    if 'failures' not in cases:
        failure_cases = ()
    model.eval()
    k = len(classes)
    known = [f for f in TENSOR_FAILURES if failures.FAILURES.get(f) in MODALITIES]
    unknown = set(failure_cases) - set(known)
    if unknown:
        raise ValueError(f'unknown failure cases {sorted(unknown)}; known: {known}')
    corrupt = Corrupter(frontend, seed, rmm_fraction, nm_sigma, nm_salt_pepper)
    new = lambda: torch.zeros(k, k, dtype=torch.int64)  # noqa: E731
    scored = list(SUBSETS) if 'subsets' in cases else [FULL] if 'full' in cases else []
    modes = list(missing_modes) if 'subsets' in cases else list(missing_modes[:1])
    emm = {mode: {s: new() for s in scored} for mode in modes}
    partial = [s for s in SUBSETS if s != FULL]
    rmm = {s: new() for s in partial} if 'rmm' in cases else {}
    nm = {s: new() for s in partial} if 'nm' in cases else {}
    fail = {f: new() for f in failure_cases}
    samples = 0
    for batch in tqdm(_loader(dataset, batch_size), desc='evaluate', unit='batch',
                      disable=not progress):
        batch = {key: v.to(device) for key, v in batch.items()}
        samples += len(batch['labels'])
        inputs = {m: batch[m] for m in MODALITIES}
        pres, labels = batch['presence'], batch['labels']
        for s, names in SUBSETS.items():
            mask = torch.from_numpy(presence_from_names(names)).to(device)
            for mode in modes:
                if s in emm[mode]:
                    _accumulate(model, inputs, pres & mask, labels, mode, emm[mode][s])
            if s == FULL:
                continue
            absent = [m for m in MODALITIES if m not in names]
            if rmm:
                _accumulate(model, _per_sample(batch, absent, corrupt.rmm), pres, labels,
                            'remove', rmm[s])
            if nm:
                _accumulate(model, _per_sample(batch, absent, corrupt.nm), pres, labels,
                            'remove', nm[s])
        for f in failure_cases:
            fn = lambda m, x, i, f=f: corrupt.failure(f, m, x, i)  # noqa: E731
            _accumulate(model, _per_sample(batch, MODALITIES, fn), pres, labels, 'remove',
                        fail[f])

    def table(cms: dict[str, torch.Tensor]) -> dict[str, Any]:
        scores = {s: _score(cm, classes) for s, cm in cms.items()}
        return {'subsets': scores, 'mean_miou': _mean([v['miou'] for v in scores.values()])}

    result: dict[str, Any] = {
        'classes': list(classes), 'samples': samples, 'cases': list(cases),
        'iou_convention': IOU_CONVENTION,
        'missing_semantics': {m: MISSING_SEMANTICS[m] for m in modes},
        'full': None,
    }
    if modes and FULL in emm[modes[0]]:  # + its confusion matrix: which class a miss went to
        cm = emm[modes[0]][FULL]
        result['full'] = {**_score(cm, classes), 'confusion': cm.tolist()}
    if 'subsets' in cases:
        result['emm'] = {mode: table(emm[mode]) for mode in modes}
    if 'rmm' in cases:
        result['rmm'] = {'fraction': rmm_fraction, **table(rmm)}
    if 'nm' in cases:
        result['nm'] = {'sigma': nm_sigma, 'salt_pepper': nm_salt_pepper, **table(nm)}
    if 'failures' in cases:
        result['failures'] = {f: _score(cm, classes) for f, cm in fail.items()}
    return result


CLASS_TABLE_SUBSETS = ('RDLE', 'R', 'D', 'L', 'E')


def class_table(result: dict[str, Any]) -> str:
    """IoU per class (rows) for all modalities and each modality alone (columns), in %."""
    cols: list[tuple[str, dict[str, Any]]] = []
    if result.get('full'):
        cols.append((FULL, result['full']))
    emm = (result.get('emm') or {}).get('remove', {}).get('subsets', {})
    cols += [(s, emm[s]) for s in CLASS_TABLE_SUBSETS if s != FULL and s in emm]
    if not cols:
        return ''
    lines = ['| class | ' + ' | '.join(name for name, _ in cols) + ' |',
             '|---|' + '---|' * len(cols)]
    for c in result['classes']:
        lines.append(f'| {c} | ' + ' | '.join(_fmt(score['iou'].get(c)) for _, score in cols)
                     + ' |')
    lines.append('| **mIoU** | ' + ' | '.join(_fmt(score['miou']) for _, score in cols) + ' |')
    return '\n'.join(lines)


def confusion_table(result: dict[str, Any]) -> str:
    """All modalities: % of each true class's pixels (rows) predicted as each class (columns)."""
    cm = (result.get('full') or {}).get('confusion')
    if not cm:
        return ''
    return confusion_markdown(result['classes'], confusion_shares(result['classes'], cm))


def _fmt(v: float | None) -> str:
    return '-' if v is None else f'{100 * v:.2f}'


def markdown_report(result: dict[str, Any]) -> str:
    """The evaluation as Markdown tables (mIoU in %); cases not evaluated are left out."""
    lines = [f'# Evaluation of `{result.get("checkpoint", "?")}`', '',
             f'Samples: {result["samples"]}. IoU: {result["iou_convention"]}.', '',
             'Missing-modality semantics: ' + '; '.join(
                 f'**{m}**: {d}' for m, d in result['missing_semantics'].items()) + '.', '']
    if 'emm' in result:
        modes = list(result['emm'])
        extra = [c for c in ('rmm', 'nm') if c in result]
        lines += ['## mIoU per modality subset (%)', '',
                  '| subset | ' + ' | '.join([f'EMM {m}' for m in modes]
                                             + [c.upper() for c in extra]) + ' |',
                  '|---|' + '---|' * (len(modes) + len(extra))]
        for s in SUBSETS:
            row = [_fmt(result['emm'][m]['subsets'][s]['miou']) for m in modes]
            row += [_fmt(result[c]['subsets'][s]['miou']) if s in result[c]['subsets']
                    else 'n/a' for c in extra]
            lines.append(f'| {s} | ' + ' | '.join(row) + ' |')
        means = [_fmt(result['emm'][m]['mean_miou']) for m in modes]
        means += [_fmt(result[c]['mean_miou']) for c in extra]
        lines += ['| **mean** | ' + ' | '.join(means) + ' |', '',
                  'EMM mean over the 15 subsets; RMM and NM over the 14 with a missing modality'
                  + (f' (RMM: {100 * result["rmm"]["fraction"]:.0f}% of its pixels zeroed)'
                     if 'rmm' in result else '')
                  + (f' (NM: Gaussian sigma {result["nm"]["sigma"]} + '
                     f'{100 * result["nm"]["salt_pepper"]:.0f}% salt-and-pepper)'
                     if 'nm' in result else '') + '.', '']
    if result.get('failures'):
        lines += ['## Sensor failures, all modalities (%)', '', '| case | mIoU |', '|---|---|']
        lines += [f'| {f} | {_fmt(v["miou"])} |' for f, v in result['failures'].items()]
        lines.append('')
    table = class_table(result)
    if table:
        lines += ['## IoU per class (%): all modalities and each modality alone', '', table, '']
    confusion = confusion_table(result)
    if confusion:
        lines += ['## Confusion, all modalities: % of each true class\'s pixels', '',
                  confusion, '']
    return '\n'.join(lines)


def write_report(result: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    js, md = out / 'eval.json', out / 'eval.md'
    js.write_text(json.dumps(result, indent=1, allow_nan=False))
    md.write_text(markdown_report(result))
    return js, md


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from training.engine import resolve_device
    from training.export import load_model
    from training.rmmss.config import load_config, make_dataset

    parser = argparse.ArgumentParser(prog='rmseg-train evaluate',
                                     description='mIoU over modality subsets and failure cases.')
    parser.add_argument('--checkpoint', help='deployable or training checkpoint, or run dir')
    parser.add_argument('--shards', nargs='+', help='shard globs (default: the config\'s)')
    parser.add_argument('--device', help='auto | cpu | cuda')
    parser.add_argument('--max-samples', type=int,
                        help='evaluate on N evenly spaced samples only (0: all)')
    parser.add_argument('--cases', default=','.join(CASES),
                        help='comma-separated cases to score, of ' + ', '.join(CASES) +
                             ' (default: all; "full,subsets" makes 15 passes per batch '
                             'instead of ~63)')
    parser.add_argument('--missing', help='comma-separated missing-modality semantics of the '
                        'subsets case, of ' + ', '.join(MISSING_SEMANTICS) + ' (default: the '
                        "config's evaluate.missing)")
    opts = parser.parse_args(extra)
    cases = [c.strip() for c in opts.cases.split(',') if c.strip()]
    logging.basicConfig(level=logging.INFO, format='%(name)s: %(message)s')
    overrides: dict[str, Any] = {} if opts.max_samples is None else {
        'evaluate': {'max_samples': opts.max_samples}}
    if opts.missing:
        overrides.setdefault('evaluate', {})['missing'] = [
            m.strip() for m in opts.missing.split(',') if m.strip()]
    cfg, _ = load_config(args.config, 'evaluate', args.smoke, overrides)
    ev = cfg.evaluate
    ckpt = opts.checkpoint or ev.checkpoint or str(cfg.run_dir('fsm') / 'model.safetensors')
    device = resolve_device(opts.device or ev.device)
    model, meta = load_model(ckpt, device)
    frontend = from_dict(FrontendConfig, meta['frontend'], 'checkpoint frontend')
    patterns = opts.shards or ev.shards or cfg.data.val_shards
    dataset = make_dataset(patterns, frontend, augment=None,
                           labelled_only=True, max_samples=ev.max_samples)
    result = evaluate_model(model, dataset, meta['classes'], frontend, device,
                            batch_size=ev.batch_size, missing_modes=ev.missing,
                            failure_cases=ev.failures, rmm_fraction=ev.rmm_fraction,
                            nm_sigma=ev.nm_sigma, nm_salt_pepper=ev.nm_salt_pepper, seed=ev.seed,
                            cases=cases)
    result = {'checkpoint': str(ckpt), 'arch': meta.get('arch'),
              'train_config_hash': meta.get('train_config_hash'), 'shards': patterns, **result}
    out = Path(args.out) if args.out else cfg.run_dir('evaluate')
    js, md = write_report(result, out)
    log.info('wrote %s and %s', js, md)
    print(class_table(result))
    print(json.dumps({'full_miou': result['full']['miou'] if result['full'] else None,
                      **{f'emm_{m}_mean': v['mean_miou']
                         for m, v in result.get('emm', {}).items()},
                      **{f'{c}_mean': result[c]['mean_miou'] for c in ('rmm', 'nm')
                         if c in result},
                      'report': str(md)}, indent=1))
    return 0
