"""bench/record.py: a benchmark script's printed figures kept in docs/results.{json,md}."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.record import main, parse_figures


def test_parse_figures_keeps_figure_lines_only():
    out = ('40 frames after 10 warm-up, 2 threads\n'
           'robotseg_frame_ms: 21.59 ms\n'
           'robotseg_params_m: 0.278 M\n'
           'train_loop_efficiency: 0.945\n'
           'tiny_ms: 1e-3 ms\n'
           'fresh_F20_rate_hz: 30.0 Hz\n'
           'error: nothing measured\n')
    assert parse_figures(out) == {
        'robotseg_frame_ms': {'value': 21.59, 'unit': 'ms'},
        'robotseg_params_m': {'value': 0.278, 'unit': 'M'},
        'train_loop_efficiency': {'value': 0.945, 'unit': ''},
        'tiny_ms': {'value': 0.001, 'unit': 'ms'},
        'fresh_F20_rate_hz': {'value': 30.0, 'unit': 'Hz'}}


def _script(path: Path, body: str) -> str:
    path.write_text('import sys\n' + body)
    return str(path)


def test_record_keeps_each_script_and_writes_nothing_for_a_failed_one(tmp_path):
    docs = tmp_path / 'docs'
    first = _script(tmp_path / 'first.py',
                    'print("note line")\nprint(f"a_ms: {float(sys.argv[1]):.2f} ms")\n')
    second = _script(tmp_path / 'second.py', 'print("b_hz: 30.0 Hz")\n')
    assert main(['--docs', str(docs), first, '12.5']) == 0
    assert main(['--docs', str(docs), second]) == 0
    assert main(['--docs', str(docs), first, '7']) == 0  # a rerun replaces its own entry
    bench = json.loads((docs / 'results.json').read_text())['bench']
    assert bench[Path(first).as_posix()]['figures'] == {'a_ms': {'value': 7.0, 'unit': 'ms'}}
    assert bench[Path(first).as_posix()]['command'].endswith('first.py 7')
    assert bench[Path(second).as_posix()]['figures']['b_hz']['value'] == 30.0
    md = (docs / 'results.md').read_text()
    assert '<!-- bench:begin -->' in md and '| `a_ms` | 7 | ms |' in md
    assert md.count('| `b_hz` | 30 | Hz |') == 1
    failing = _script(tmp_path / 'failing.py', 'print("c_ms: 1.0 ms")\nsys.exit(3)\n')
    assert main(['--docs', str(docs), failing]) == 3
    silent = _script(tmp_path / 'silent.py', 'print("measured nothing")\n')
    assert main(['--docs', str(docs), silent]) == 1
    after = json.loads((docs / 'results.json').read_text())['bench']
    assert set(after) == {Path(first).as_posix(), Path(second).as_posix()}


@pytest.mark.parametrize('line', ['a_ms: fast ms', '_ms: 1 ms', 'a_ms 1 ms', '# a_ms: 1 ms'])
def test_parse_figures_rejects_lines_not_of_the_contract(line):
    assert parse_figures(line) == {}
