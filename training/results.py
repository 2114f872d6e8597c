"""docs/results.{json,md}: one section per pipeline, each rewritten only by its own report code.

Every pipeline (rmmss, robult, rss, robotseg) owns a JSON key and a Markdown block between
`<!-- name:begin -->` / `<!-- name:end -->` markers, so reports written by different commands
never overwrite each other and every figure in the Markdown is also in the JSON.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

HEADER = ('# Results\n\nMeasured by the project\'s scripts; every figure here is also in '
          '`results.json`.\n')


def mean_se(values: list[float | None], digits: int | None = 2
            ) -> tuple[float | None, float | None]:
    """Mean and standard error of the mean over the values that are not None (None when there
    is none; se None for one), rounded to `digits` (None: not rounded)."""
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None
    mean = float(np.mean(vals))
    se = float(np.std(vals, ddof=1) / math.sqrt(len(vals))) if len(vals) > 1 else None
    if digits is None:
        return mean, se
    return round(mean, digits), None if se is None else round(se, digits)


def markers(section: str) -> tuple[str, str]:
    return f'<!-- {section}:begin -->', f'<!-- {section}:end -->'


def write_section(section: str, figures: dict[str, Any], block: str, docs: str | Path = 'docs'
                  ) -> None:
    """Replace `section` in results.json with `figures` and its Markdown block with `block`.

    `block` is the Markdown body without the markers; other sections are left untouched.
    """
    docs = Path(docs)
    docs.mkdir(parents=True, exist_ok=True)
    js = docs / 'results.json'
    data = json.loads(js.read_text()) if js.exists() else {}
    data[section] = figures
    js.write_text(json.dumps(data, indent=1, sort_keys=True) + '\n')
    md = docs / 'results.md'
    text = md.read_text() if md.exists() else HEADER
    begin, end = markers(section)
    wrapped = f'{begin}\n{block.strip(chr(10))}\n{end}'
    if begin in text and end in text:
        text = text[:text.index(begin)] + wrapped + text[text.index(end) + len(end):]
    else:
        text = text.rstrip('\n') + '\n\n' + wrapped + '\n'
    md.write_text(text)


def validation_curve(run_dir: Path) -> list[tuple[int, float]]:
    """(step, validation mean mIoU over the validated subsets) of a run, in step order."""
    path = run_dir / 'metrics.jsonl'
    if not path.exists():
        return []
    points: dict[int, float] = {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if rec.get('split') == 'val' and rec.get('miou_mean') is not None:
            points[int(rec['step'])] = float(rec['miou_mean'])
    return sorted(points.items())


def last_fifth_change(curve: list[tuple[int, float]]) -> float | None:
    """Validation mIoU at the end minus at 80 % of the steps (points: %): how flat the end is."""
    if len(curve) < 2:
        return None
    end_step, end = curve[-1]
    before = [v for s, v in curve if s <= 0.8 * end_step]
    return None if not before else round(100.0 * (end - before[-1]), 2)



Curve = list[tuple[int, float]]


def draw_curve_panels(panels: dict[str, list[tuple[str, Curve]]], path: Path) -> bool:
    """Validation mIoU (0-1) against the step: one panel per title, one line per (label, curve)
    (OpenCV drawing, PNG). False when there is nothing to draw."""
    import cv2

    panels = {k: v for k, v in panels.items() if v}
    if not panels:
        return False
    pw, ph, m = 420, 300, 48
    rows = max(len(v) for v in panels.values())
    img = np.full((ph + 2 * m + 14 * max(0, rows - 2), len(panels) * (pw + m) + m, 3), 255,
                  np.uint8)
    palette = [(200, 80, 30), (30, 140, 40), (40, 40, 200), (150, 40, 150), (0, 140, 160),
               (120, 120, 0)]
    top = max(v for g in panels.values() for _, c in g for _, v in c)
    ymax = min(1.0, math.ceil(top * 10 + 0.5) / 10)
    for gi, (title, items) in enumerate(panels.items()):
        x0 = m + gi * (pw + m)
        xmax = max(s for _, c in items for s, _ in c) or 1
        cv2.rectangle(img, (x0, m), (x0 + pw, m + ph), (0, 0, 0), 1)
        for t in range(0, 11, 2):
            y = m + ph - int(ph * t / 10)
            cv2.putText(img, f'{100 * t / 10 * ymax:.0f}', (x0 - 30, y + 4),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(img, f'{title} (val mIoU %, step 0-{xmax})', (x0, m - 10),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        for ci, (name, curve) in enumerate(items):
            color = palette[ci % len(palette)]
            pts = np.array([[x0 + int(pw * s / xmax), m + ph - int(ph * v / ymax)]
                            for s, v in curve], np.int32)
            cv2.polylines(img, [pts], False, color, 2, cv2.LINE_AA)
            for x, y in pts:  # a run with one validation point is a dot, not nothing
                cv2.circle(img, (int(x), int(y)), 3, color, -1, cv2.LINE_AA)
            cv2.putText(img, name, (x0 + 8, m + ph + 16 + 14 * ci),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.4, color, 1, cv2.LINE_AA)
    path.parent.mkdir(parents=True, exist_ok=True)
    return bool(cv2.imwrite(str(path), img))


def confusion_markdown(classes: Sequence[str], shares: dict[str, dict[str, float]]) -> str:
    """`confusion_shares` as a Markdown table; classes without pixels get '-'."""
    lines = ['| true \\ predicted | ' + ' | '.join(classes) + ' |',
             '|---|' + '---|' * len(classes)]
    for c in classes:
        row = shares.get(c)
        cells = [f'{row[p]:.1f}' if row else '-' for p in classes]
        lines.append(f'| {c} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)
