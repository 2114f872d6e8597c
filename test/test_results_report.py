"""The RMMSS results report: every figure in results.md comes from results.json's section, and
rewriting replaces only that section."""

import json

from rmseg_ros.modalities import all_subsets, subset_name
from training.rmmss import report


def _eval(base: float) -> dict:
    subsets = {subset_name(s): {'miou': base + 0.01 * i} for i, s in enumerate(all_subsets())}
    table = {'subsets': subsets, 'mean_miou': sum(v['miou'] for v in subsets.values()) / 15}
    return {'samples': 60, 'full': {'miou': base + 0.14}, 'emm': {'remove': table, 'zero': table},
            'rmm': {'mean_miou': base}, 'nm': {'mean_miou': base / 2},
            'failures': {'motion_blur': {'miou': base / 3}}}


def test_report_writes_json_and_markdown_section(tmp_path):
    runs = tmp_path / 'runs'
    for i, run in enumerate(['teacher', 'fsm']):
        (runs / f'eval_{run}').mkdir(parents=True)
        (runs / f'eval_{run}' / 'eval.json').write_text(json.dumps(_eval(0.3 + 0.1 * i)))
        (runs / run).mkdir()
        (runs / run / 'config.yaml').write_text('run: {steps: 123}\n')
    docs = tmp_path / 'docs'
    (docs).mkdir()
    (docs / 'results.md').write_text('# Results\n\nother section stays\n')
    (docs / 'results.json').write_text(json.dumps({'other': {'x': 1}}))
    assert report.main(['--runs', str(runs), '--docs', str(docs)]) == 0
    data = json.loads((docs / 'results.json').read_text())
    assert data['other'] == {'x': 1}
    fig = data['rmmss']
    assert fig['teacher_full_miou'] == 44.0 and fig['fsm_full_miou'] == 54.0
    assert fig['fsm_subset_mean'] == round(100 * (0.4 + 0.07), 2)
    assert fig['teacher_train_steps'] == 123 and 'dropout_subset_mean' not in fig
    md = (docs / 'results.md').read_text()
    assert 'other section stays' in md
    assert f'{fig["fsm_subset_mean"]:.2f}' in md and f'{fig["teacher_rmm_mean"]:.2f}' in md
    report.main(['--runs', str(runs), '--docs', str(docs)])
    assert (docs / 'results.md').read_text() == md  # idempotent: the section is replaced


def test_report_without_evaluations_fails(tmp_path):
    assert report.main(['--runs', str(tmp_path), '--docs', str(tmp_path / 'docs')]) == 1
