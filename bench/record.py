"""Run one benchmark script and keep what it measured in docs/results.{json,md}.

    python bench/record.py [--docs docs] bench/robotseg.py --checkpoint weights/robotseg.safetensors

The script runs as it would alone (its output is echoed); every `figure_name: value unit` line it
prints (DESIGN.md section 7) goes to the `bench` section of results.json under the script's name,
with the command, the time and the 1-minute load average at the start, and the section's table
in results.md is rewritten. Other scripts' entries are kept. Nothing is written when the script
exits non-zero or prints no figure. Take the numbers on a quiet machine: the load average is
recorded so that a busy run can be seen.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.results import write_section

SECTION = 'bench'
FIGURE_RE = re.compile(r'^([A-Za-z][A-Za-z0-9_]*): (-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)'
                       r'(?: (.*))?$')


def parse_figures(output: str) -> dict[str, dict[str, Any]]:
    """figure -> {'value', 'unit'} of every `figure_name: value unit` line (others ignored)."""
    figures: dict[str, dict[str, Any]] = {}
    for line in output.splitlines():
        m = FIGURE_RE.match(line.strip())
        if m:
            figures[m.group(1)] = {'value': float(m.group(2)), 'unit': (m.group(3) or '').strip()}
    return figures


def markdown(entries: dict[str, dict[str, Any]]) -> str:
    lines = ['## Benchmarks (`bench/record.py`)', '',
             'The last recorded run of each benchmark script, as it printed its figures; '
             'written by `python bench/record.py <script> [args]`.', '',
             '| script | figure | value | unit | measured | load (1 min) |',
             '|---|---|---|---|---|---|']
    for script, entry in sorted(entries.items()):
        for name, fig in entry['figures'].items():
            lines.append(f'| `{script}` | `{name}` | {fig["value"]:g} | {fig["unit"]} | '
                         f'{entry["measured"]} | {entry["loadavg_1m"]:.2f} |')
    commands = [f'`{s}`: `{e["command"]}`' for s, e in sorted(entries.items())]
    return '\n'.join([*lines, '', 'Commands: ' + '; '.join(commands) + '.'])


def record(script: str, args: list[str], docs: Path) -> int:
    load = os.getloadavg()[0]
    started = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')
    cmd = [sys.executable, script, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    figures = parse_figures(proc.stdout)
    if proc.returncode != 0 or not figures:
        print(f'[record] nothing recorded: {script} exited {proc.returncode} with '
              f'{len(figures)} figures', file=sys.stderr)
        return proc.returncode or 1
    js = docs / 'results.json'
    entries = (json.loads(js.read_text()).get(SECTION, {}) if js.exists() else {})
    name = Path(script).as_posix()
    entries[name] = {'figures': figures, 'measured': started, 'loadavg_1m': round(load, 2),
                     'command': ' '.join(['python', name, *args])}
    write_section(SECTION, entries, markdown(entries), docs)
    print(f'[record] {len(figures)} figures of {name} -> {docs}/results.json [{SECTION}]')
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog='python bench/record.py',
                                 description=__doc__.split('\n\n')[0],
                                 epilog='Everything after the script is passed to it.')
    ap.add_argument('--docs', default='docs', help='where results.{json,md} live')
    ap.add_argument('script', help='the benchmark script, e.g. bench/robotseg.py')
    ap.add_argument('args', nargs=argparse.REMAINDER, help="the script's own arguments")
    opts = ap.parse_args(argv)
    return record(opts.script, opts.args, Path(opts.docs))


if __name__ == '__main__':
    sys.exit(main())
