"""The RMMSS results report: every figure in results.md comes from results.json's section, seeds
are averaged with their standard error, per-class tables are written, and rewriting replaces
only that section."""

import json
import math

import pytest

from rmseg_ros.modalities import all_subsets, subset_name
from training.rmmss import report

CLASSES = ['floor', 'mug']


def _score(miou: float) -> dict:
    return {'miou': miou, 'iou': {'floor': miou + 0.1, 'mug': miou - 0.1}}


def _eval(base: float, full_protocol: bool = True) -> dict:
    subsets = {subset_name(s): _score(base + 0.01 * i) for i, s in enumerate(all_subsets())}
    table = {'subsets': subsets, 'mean_miou': sum(v['miou'] for v in subsets.values()) / 15}
    ev = {'samples': 60, 'classes': CLASSES, 'full': _score(base + 0.14),
          'emm': {'remove': table}}
    if full_protocol:
        ev['emm']['zero'] = table
        ev.update({'rmm': {'mean_miou': base}, 'nm': {'mean_miou': base / 2},
                   'failures': {'motion_blur': {'miou': base / 3}}})
    return ev


def _write(path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data) if isinstance(data, dict) else data)


def _runs(tmp_path):
    runs = tmp_path / 'runs'
    _write(runs / 'eval_teacher' / 'eval.json', _eval(0.3))
    _write(runs / 'teacher' / 'config.yaml', 'run: {steps: 123}\n')
    _write(runs / 'teacher' / 'metrics.jsonl', '\n'.join(json.dumps(
        {'split': 'val', 'step': s, 'miou_mean': v}) for s, v in
        ((50, 0.2), (80, 0.4), (100, 0.41))) + '\n')
    for seed, base in ((0, 0.40), (1, 0.42), (2, 0.47)):
        _write(runs / f'seed{seed}' / 'eval_fsm' / 'eval.json', _eval(base, seed == 0))
        _write(runs / f'seed{seed}' / 'fsm' / 'config.yaml', 'run: {steps: 7}\n')
        _write(runs / f'seed{seed}' / 'eval_dropout' / 'eval.json', _eval(base - 0.02, seed == 0))
    _write(runs / 'eval_heldout' / 'eval.json', {**_eval(0.35, False), 'shards': ['h/*']})
    fitted = _eval(0.6, False)
    del fitted['emm']
    _write(runs / 'eval_fsm_train' / 'eval.json', {**fitted, 'shards': ['t/*']})
    return runs


def test_report_writes_json_and_markdown_section(tmp_path):
    runs = _runs(tmp_path)
    docs = tmp_path / 'docs'
    _write(docs / 'results.md', '# Results\n\nother section stays\n')
    _write(docs / 'results.json', {'other': {'x': 1}})
    assert report.main(['--runs', str(runs), '--docs', str(docs), '--seeds', '0', '1', '2']) == 0
    data = json.loads((docs / 'results.json').read_text())
    assert data['other'] == {'x': 1}
    fig = data['rmmss']
    assert fig['seeds'] == [0, 1, 2] and fig['teacher_full_miou'] == 44.0
    # seeds: full mIoU 54, 56, 61 -> mean 57, s.e. = std(ddof=1) / sqrt(3)
    assert fig['fsm_full_miou_per_seed'] == [54.0, 56.0, 61.0]
    assert fig['fsm_full_miou'] == pytest.approx(57.0)
    se = math.sqrt(((54 - 57) ** 2 + (56 - 57) ** 2 + (61 - 57) ** 2) / 2) / math.sqrt(3)
    assert fig['fsm_full_miou_se'] == pytest.approx(round(se, 2))
    assert fig['fsm_class_iou'] == {'floor': pytest.approx(67.0), 'mug': pytest.approx(47.0)}
    assert fig['dropout_matched_subset_mean'] == fig['dropout_subset_mean']
    assert fig['fsm_subset_mean_se'] == fig['dropout_matched_subset_mean_se']  # same spread
    assert fig['fsm_minus_dropout_subset_mean'] == pytest.approx(2.0)
    assert fig['teacher_train_steps'] == 123 and fig['fsm_train_steps'] == 7
    assert fig['fsm_rmm_mean'] == 40.0  # the full protocol of the shipped (first) seed
    assert fig['heldout']['full_miou'] == 49.0 and fig['heldout']['class_iou']['mug'] == 39.0
    assert fig['val_last_fifth_change'] == {'teacher': pytest.approx(1.0)}  # 41 - 40 at step 80
    md = (docs / 'results.md').read_text()
    assert 'other section stays' in md and (docs / report.CURVE_FILE).exists()
    assert f'{fig["fsm_subset_mean"]:.2f} ± {fig["fsm_subset_mean_se"]:.2f}' in md
    assert 'IoU per class, all modalities' in md and 'IoU per class, RGB alone' in md
    assert '| held-out | 49.00 |' in md
    assert '| mug | ' in md and f'{fig["teacher_rmm_mean"]:.2f}' in md
    report.main(['--runs', str(runs), '--docs', str(docs), '--seeds', '0', '1', '2'])
    assert (docs / 'results.md').read_text() == md  # idempotent: the section is replaced


def test_report_shows_the_student_on_training_frames_and_its_confusion(tmp_path):
    runs = _runs(tmp_path)
    ship = runs / 'seed0' / 'eval_fsm' / 'eval.json'
    ev = json.loads(ship.read_text())
    ev['full']['confusion'] = [[90, 10], [30, 70]]  # rows: true floor, true mug
    _write(ship, ev)
    docs = tmp_path / 'docs'
    assert report.main(['--runs', str(runs), '--docs', str(docs), '--seeds', '0', '1', '2']) == 0
    fig = json.loads((docs / 'results.json').read_text())['rmmss']
    assert fig['fsm_train_frames']['class_iou'] == {'floor': 84.0, 'mug': 64.0}
    assert fig['fsm_confusion_pct'] == {'floor': {'floor': 90.0, 'mug': 10.0},
                                        'mug': {'floor': 30.0, 'mug': 70.0}}
    md = (docs / 'results.md').read_text()
    assert '| training frames | 74.00 | 84.00 | 64.00 |' in md
    assert '| mug | 30.0 | 70.0 |' in md


def test_report_compares_hpdm_and_dropout_curves_step_by_step(tmp_path):
    runs = _runs(tmp_path)
    curves = {0: ({500: 0.30, 1000: 0.40}, {500: 0.28, 1000: 0.40, 1500: 0.41}),
              1: ({500: 0.32, 1000: 0.41}, {500: 0.28, 1000: 0.40})}
    for seed, (hpdm, dropout) in curves.items():
        _write(runs / f'seed{seed}' / 'eval_robust' / 'eval.json', _eval(0.4, False))
        for run, points in (('robust', hpdm), ('dropout', dropout)):
            _write(runs / f'seed{seed}' / run / 'metrics.jsonl', '\n'.join(
                json.dumps({'split': 'val', 'step': st, 'miou_mean': v})
                for st, v in points.items()) + '\n')
    docs = tmp_path / 'docs'
    assert report.main(['--runs', str(runs), '--docs', str(docs), '--seeds', '0', '1']) == 0
    gap = json.loads((docs / 'results.json').read_text())['rmmss']['val_hpdm_minus_dropout_by_step']
    assert sorted(gap, key=int) == ['500', '1000']  # step 1500: the HPDM run never validated there
    assert gap['500']['mean'] == pytest.approx(3.0) and gap['500']['se'] == pytest.approx(1.0)
    assert gap['1000']['mean'] == pytest.approx(0.5) and gap['1000']['seeds'] == 2
    assert 'step 500 3.00 ± 1.00, step 1000 0.50 ± 0.50' in (docs / 'results.md').read_text()


def test_mean_and_standard_error():
    assert report.mean_se([1.0, None, 3.0]) == (2.0, 1.0)
    assert report.mean_se([5.0]) == (5.0, None)
    assert report.mean_se([None]) == (None, None)


def test_report_without_evaluations_fails(tmp_path):
    assert report.main(['--runs', str(tmp_path), '--docs', str(tmp_path / 'docs')]) == 1


def test_report_pairs_hpdm_with_the_dropout_baseline_at_equal_steps(tmp_path):
    """The dropout run's checkpoint at the HPDM's step count is paired with HPDM seed by seed
    (what distillation adds) and with the compute-matched end (what the extra steps add)."""
    runs = _runs(tmp_path)
    for seed, (hpdm, equal) in {0: (0.40, 0.39), 1: (0.44, 0.40), 2: (0.45, 0.45)}.items():
        _write(runs / f'seed{seed}' / 'eval_robust' / 'eval.json', _eval(hpdm, False))
        _write(runs / f'seed{seed}' / 'robust' / 'config.yaml', 'run: {steps: 5}\n')
        if seed != 1:  # a seed without the equal-steps evaluation is left out of the pairs
            _write(runs / f'seed{seed}' / 'eval_dropout_at_robust' / 'eval.json',
                   _eval(equal, False))
    docs = tmp_path / 'docs'
    assert report.main(['--runs', str(runs), '--docs', str(docs), '--seeds', '0', '1', '2']) == 0
    fig = json.loads((docs / 'results.json').read_text())['rmmss']
    assert fig['dropout_equal_seeds'] == [0, 2] and fig['dropout_equal_train_steps'] == 5
    gain = fig['hpdm_minus_dropout_equal_subset_mean']
    assert gain['seeds'] == [0, 2] and gain['per_seed'] == [pytest.approx(1.0), 0.0]
    assert gain['mean'] == pytest.approx(0.5) and gain['se'] == pytest.approx(0.5)
    extra = fig['dropout_extra_steps_gain_subset_mean']  # dropout = fsm - 2 points per seed
    assert extra['per_seed'] == [pytest.approx(-1.0), pytest.approx(0.0)]
    md = (docs / 'results.md').read_text()
    assert 'at the same steps (what distillation adds), 15-subset mean: 0.50 ± 0.50' in md


def test_report_sets_the_teacher_at_other_steps_beside_the_one_distilled_from(tmp_path):
    runs = _runs(tmp_path)
    _write(runs / 'eval_teacher_long' / 'eval.json', _eval(0.33))
    _write(runs / 'teacher_long' / 'config.yaml', 'run: {steps: 246}\n')
    _write(runs / 'teacher_long' / 'metrics.jsonl', '\n'.join(json.dumps(
        {'split': 'val', 'step': s, 'miou_mean': v}) for s, v in
        ((100, 0.2), (190, 0.43), (246, 0.43))) + '\n')
    _write(runs / 'eval_teacher_half' / 'eval.json', _eval(0.29))
    _write(runs / 'teacher_half' / 'config.yaml', 'run: {steps: 61}\n')
    docs = tmp_path / 'docs'
    assert report.main(['--runs', str(runs), '--docs', str(docs), '--seeds', '0', '1', '2']) == 0
    fig = json.loads((docs / 'results.json').read_text())['rmmss']
    assert fig['teacher_long_full_miou'] == 47.0 and fig['teacher_long_train_steps'] == 246
    assert fig['teacher_long_minus_teacher'] == {'full_miou': pytest.approx(3.0),
                                                 'subset_mean': pytest.approx(3.0)}
    assert fig['teacher_half_train_steps'] == 61
    assert fig['teacher_half_minus_teacher']['full_miou'] == pytest.approx(-1.0)
    assert fig['val_last_fifth_change']['teacher long'] == pytest.approx(0.0)
    md = (docs / 'results.md').read_text()
    assert 'Teacher with 246 steps - with 123' in md and 'full_miou +3.00' in md
    assert 'Teacher with 61 steps - with 123' in md and 'full_miou -1.00' in md
    assert md.count('| teacher, twice the steps') == 1
    assert md.count('| teacher, half the steps') == 1
