"""The RSS ablation's plan: its rows (the paper's Tables 1-3) from the budget YAML, their order
and their config overrides. Shared by the runner (training.rss.ablation) and the report
(training.rss.report), which only reads the runs the plan names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rmseg_ros.config import load_yaml, merge_config

from .config import RSSConfig, load_config

DEFAULT_BUDGET = Path(__file__).resolve().parents[1] / 'configs' / 'rss_ablation.yaml'
COLDSTART = 'coldstart'


@dataclass
class Row:
    name: str
    label: str
    tables: list[int] = field(default_factory=list)
    cold: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)


def load_budget(path: str | Path | None) -> dict[str, Any]:
    return load_yaml(path or DEFAULT_BUDGET)


def _factor_name(base: str, cold: bool, factor: float) -> str:
    return f'{base}{"_cold" if cold else ""}_lr{factor:g}'


def plan(budget: dict[str, Any]) -> list[Row]:
    """Every run of the ablation in order: the cold-start model first, then the rows, then the
    learning-rate sweep (factors equal to the base row's own are that row, not trained twice)."""
    unknown = set(budget.get('seed_rows') or []) - set(budget.get('rows') or {})
    if unknown:
        raise ValueError(f'seed_rows names rows the budget does not have: {sorted(unknown)}')
    cs = budget.get('coldstart') or {}
    rows = [Row(COLDSTART, 'cold-start model (supervised, split A)', [],
                False, cs.get('overrides') or {})]
    for name, spec in (budget.get('rows') or {}).items():
        rows.append(Row(name, spec.get('label', name), list(spec.get('tables') or []),
                        bool(spec.get('cold', False)), spec.get('overrides') or {}))
    sweep = budget.get('lr_sweep') or {}
    if sweep:
        by_name = {r.name: r for r in rows}
        for cold in (False, True):
            base = by_name[sweep['base'] + ('_cold' if cold else '')]
            own = base_factor(budget, base)
            for f in sweep.get('factors') or []:
                if float(f) == own:
                    if 3 not in base.tables:
                        base.tables.append(3)
                    continue
                rows.append(Row(_factor_name(sweep['base'], cold, float(f)),
                                f'{base.label} (lr factor {float(f):g})', [3], cold,
                                merge_config(base.overrides,
                                             {'last_layer_lr_factor': float(f)}, RSSConfig)))
    return rows


def run_order(rows: list[Row], first: list[str]) -> list[Row]:
    """The cold-start model, then the rows named in `first` (the headline figures, so that a
    budget cut short still has them), then the others in table order."""
    rank = {name: i for i, name in enumerate([COLDSTART, *first])}
    return sorted(rows, key=lambda r: rank.get(r.name, len(rank)))


def seeds_of(budget: dict[str, Any]) -> list[int]:
    """The budget's seeds (default [0]); each is a directory <out_root>/seed<s>."""
    seeds = [int(s) for s in budget.get('seeds') or [0]]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f'seeds must be distinct, got {seeds}')
    return seeds


def seed_dir(out_root: str | Path, seed: int) -> Path:
    return Path(out_root) / f'seed{seed}'


def rows_for_seed(budget: dict[str, Any], rows: list[Row], seed: int) -> list[Row]:
    """Every row for the first seed; for the others the `seed_rows` (and the cold-start model
    when one of them starts from it)."""
    if seed == seeds_of(budget)[0]:
        return rows
    wanted = set(budget.get('seed_rows') or [])
    cold = any(r.cold for r in rows if r.name in wanted)
    return [r for r in rows if r.name in wanted or (cold and r.name == COLDSTART)]


def row_overrides(budget: dict[str, Any], row: Row, out_root: str | Path, smoke: bool = False,
                  steps: int | None = None, seed: int | None = None) -> dict[str, Any]:
    """The config overrides of `row` with its run directory under `out_root` (a seed's
    directory) and, with `seed`, that run seed."""
    over = merge_config(budget.get('common') or {}, row.overrides, RSSConfig)
    if smoke:
        over = merge_config(over, (budget.get('smoke') or {}).get('common'), RSSConfig)
    over = merge_config(over, {'name': row.name, 'out_root': str(out_root)}, RSSConfig)
    if steps:
        over = merge_config(over, {'run': {'steps': int(steps)}}, RSSConfig)
    if seed is not None:
        over = merge_config(over, {'run': {'seed': int(seed)}}, RSSConfig)
    if row.cold:
        over['init_checkpoint'] = str(Path(out_root) / COLDSTART / 'model.safetensors')
    return over


def base_factor(budget: dict[str, Any], row: Row) -> float:
    cfg, _ = load_config(budget.get('config'), False, row_overrides(budget, row, 'runs/rss'))
    return float(cfg.last_layer_lr_factor)
