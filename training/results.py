"""docs/results.{json,md}: one section per pipeline, each rewritten only by its own report code.

Every pipeline (rmmss, robult, rss, robotseg) owns a JSON key and a Markdown block between
`<!-- name:begin -->` / `<!-- name:end -->` markers, so reports written by different commands
never overwrite each other and every figure in the Markdown is also in the JSON.
"""

from __future__ import annotations

import json
import math
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
