"""The config merge rule (rmseg_ros.config.merge_config): sections merge, every other value -
mappings included - replaces. Checked on the rule itself and on the configs that depend on it:
an "xarm6 only" simulator variant builds scenes with xarm6 alone, the RobotSeg held-out sets keep
their arms apart, and section overrides (stages, smoke, variants, --set) still merge."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from rmseg_ros.classes import ClassTable
from rmseg_ros.config import load_yaml, merge_config, section
from training import engine
from training.robotseg import simdata
from training.sim import config as sim_config
from training.sim.config import SimConfig
from training.sim.scene import build_scene, connect, disconnect

CONFIGS = Path(__file__).resolve().parents[1] / 'training' / 'configs'


@dataclass
class Inner:
    a: int = 1
    b: int = 2
    weights: dict[str, float] = field(default_factory=lambda: {'x': 1.0, 'y': 1.0})


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    maybe: Inner | None = None
    table: dict[str, float] = field(default_factory=dict)
    partial: dict[str, Any] = field(default_factory=dict, metadata=section(Inner))
    items: list[int] = field(default_factory=list)


def test_sections_merge_and_everything_else_replaces() -> None:
    base = {'inner': {'a': 1, 'b': 2, 'weights': {'x': 1.0, 'y': 1.0}},
            'maybe': {'a': 5, 'b': 6}, 'table': {'p': 1.0, 'q': 2.0},
            'partial': {'a': 3, 'weights': {'x': 1.0}}, 'items': [1, 2, 3]}
    over = {'inner': {'a': 10, 'weights': {'z': 2.0}}, 'maybe': {'b': 60},
            'table': {'q': 5.0}, 'partial': {'b': 4, 'weights': {'y': 2.0}}, 'items': [9]}
    out = merge_config(base, over, Outer)
    assert out == {
        'inner': {'a': 10, 'b': 2, 'weights': {'z': 2.0}},  # section merges; its dict replaces
        'maybe': {'a': 5, 'b': 60},  # an optional dataclass is a section too
        'table': {'q': 5.0},  # a dict-typed field replaces
        'partial': {'a': 3, 'b': 4, 'weights': {'y': 2.0}},  # declared section(Inner)
        'items': [9]}
    assert base['table'] == {'p': 1.0, 'q': 2.0}  # inputs untouched
    # a value that is not a mapping replaces a section, and unknown keys pass (from_dict errs)
    assert merge_config(base, {'maybe': None, 'typo': {'a': 1}}, Outer)['maybe'] is None
    assert merge_config({}, {'inner': {'a': 1}}, Outer) == {'inner': {'a': 1}}


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def _arms(cfg: SimConfig, seeds: range) -> set[str]:
    classes = ClassTable.load()
    names = set()
    for seed in seeds:
        client = connect()
        try:
            names.add(build_scene(seed, cfg.scene, classes, cfg.lidar, client).robots[0].name)
        finally:
            disconnect(client)
    return names


def test_xarm6_only_variant_builds_only_xarm6(tmp_path: Path) -> None:
    variant = _write(tmp_path / 'xarm6.yaml', {'scene': {'robots': {'xarm6': 1.0},
                                                         'husky_probability': 0.0}})
    cfg = sim_config.load_config(variant)
    assert cfg.scene.robots == {'xarm6': 1.0}
    assert cfg.scene.object_classes == sim_config.load_config().scene.object_classes
    assert cfg.camera == sim_config.load_config().camera  # untouched sections stay
    # seeds 0..5 with the default weights pick other arms too (checked: not all xarm6)
    assert _arms(sim_config.load_config(), range(6)) != {'xarm6'}
    assert _arms(cfg, range(6)) == {'xarm6'}


def test_robotseg_sets_keep_their_arms_apart() -> None:
    """Training and deployment sets have the Franka arm alone; the stress set xarm6 alone, which
    is what the simulator draws for its seeds (other scene settings stay the simulator's)."""
    spec = load_yaml(CONFIGS / 'robotseg_sim.yaml')
    base = load_yaml(CONFIGS / 'sim.yaml')
    for name in ('train', 'train_more', 'deploy_dark', 'deploy_lit', 'deploy_bright'):
        assert simdata.set_config(spec, name)['scene']['robots'] == {'franka_panda': 1.0}
    stress = simdata.set_config(spec, 'stress')
    assert stress['scene']['robots'] == {'xarm6': 1.0}
    assert stress['scene']['husky_probability'] == base['scene']['husky_probability']
    assert stress['camera'] == base['camera']
    from rmseg_ros.config import from_dict

    assert _arms(from_dict(SimConfig, stress), range(9300, 9304)) == {'xarm6'}
    train = from_dict(SimConfig, simdata.set_config(spec, 'train'))
    assert _arms(train, range(100, 104)) == {'franka_panda'}
    # train_more is train's kind of scene on other seeds, none shared with any other set
    assert simdata.set_config(spec, 'train_more') == simdata.set_config(spec, 'train')
    seeds = {n: set(range(s['seed'], s['seed'] + 2 * s['scenes']))
             for n, s in spec['sets'].items()}
    assert all(not (seeds[a] & seeds[b]) for a in seeds for b in seeds if a < b)


def test_stage_smoke_and_variant_sections_still_merge() -> None:
    from training.rmmss.config import load_config as rmmss_config
    from training.robotseg.config import load_config as robotseg_config

    raw = load_yaml(CONFIGS / 'rmmss.yaml')
    fsm, _ = rmmss_config(None, 'fsm', smoke=True)
    assert fsm.run.steps == raw['smoke']['run']['steps']
    assert fsm.optim.lr == raw['stages']['fsm']['optim']['lr']  # stage kept under smoke
    assert fsm.optim.grad_clip == raw['optim']['grad_clip']
    # `model` is a dict field declared a section: smoke sizes merge over the shared ones
    assert fsm.model['shared_encoder'] is True and fsm.model['widths'] == [8, 16, 24, 32]
    no_sema, _ = robotseg_config(None, 'no_sema')
    assert no_sema.model['use_sema'] is False and no_sema.model['dim'] == 64


def test_set_paths_then_the_schema_rule() -> None:
    over = engine.parse_set(['scene.robots.xarm6=1', 'scene.brightness=[0.1, 0.2]',
                             'scene.robots.kuka_iiwa=2'])
    assert over == {'scene': {'robots': {'xarm6': 1, 'kuka_iiwa': 2},
                              'brightness': [0.1, 0.2]}}
    merged = merge_config(load_yaml(CONFIGS / 'sim.yaml'), over, SimConfig)
    assert merged['scene']['robots'] == {'xarm6': 1, 'kuka_iiwa': 2}
    assert merged['scene']['objects'] == [5, 10]
    assert engine.parse_set(['x=1', 'x.y=2']) == {'x': {'y': 2}}
    assert engine.parse_set(['x.y=2', 'x={z: 3}']) == {'x': {'z': 3}}
    with pytest.raises(TypeError):
        engine.resolve_stage_config({}, 'teacher')  # the schema must be given
