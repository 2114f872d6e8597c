"""A checkpoint is untrusted input (issue 21 item 10): required metadata, bounded sizes, finite
weights, known modalities and RGB colours are checked at load, with messages naming the field,
before anything is allocated; a path that is not a regular file is called what it is."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from rmseg_ros.inference.segmenter import Segmenter
from rmseg_ros.models.checkpoint import load_checkpoint, save_checkpoint


@pytest.fixture(scope='module')
def parts(tiny_checkpoint):
    return load_checkpoint(tiny_checkpoint)


def _write(tmp_path: Path, parts, meta_change=None, state_change=None) -> Path:
    state, meta = parts
    state = dict(state)
    meta = {**meta, 'frontend': dict(meta['frontend'])}
    if meta_change:
        meta_change(meta)
    if state_change:
        state_change(state)
    path = tmp_path / 'bad.safetensors'
    save_checkpoint(path, state, meta)
    return path


def _load(path: Path) -> Segmenter:
    return Segmenter.from_checkpoint(path, device='cpu', backend='torch')


@pytest.mark.parametrize('field', ['frontend', 'colors', 'input_hw', 'modalities', 'classes'])
def test_missing_field_is_named(tmp_path, parts, field):
    path = _write(tmp_path, parts, lambda m: m.pop(field))
    with pytest.raises(ValueError, match=f"'{field}'"):
        _load(path)


@pytest.mark.parametrize(('change', 'match'), [
    (lambda m: m.update(input_hw=[100000, 100000]), 'input_hw'),
    (lambda m: m.update(input_hw=[0, 80]), 'input_hw'),
    (lambda m: m.update(input_hw=[60]), 'input_hw'),
    (lambda m: m['frontend'].update(height=60000, width=80000), 'frontend'),
    (lambda m: m['frontend'].update(event_bins=100000), 'event_bins'),
    (lambda m: m.update(modalities=['rgb', 'thermal']), 'thermal'),
    (lambda m: m.update(modalities=[]), 'modalities'),
    (lambda m: m.update(colors=[c[:2] for c in m['colors']]), 'colors'),
    (lambda m: m.update(colors=[[999, 0, 0]] * len(m['colors'])), 'colors'),
    (lambda m: m.update(classes='floor'), 'classes'),
])
def test_insane_metadata_is_refused_before_allocating(tmp_path, parts, change, match):
    path = _write(tmp_path, parts, change)
    with pytest.raises(ValueError, match=match):
        _load(path)


@pytest.mark.parametrize('value', [float('nan'), float('inf')])
def test_non_finite_weights_are_refused(tmp_path, parts, value):
    def poison(state):
        name = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
        t = state[name].clone()
        t.view(-1)[1] = value
        state[name] = t

    path = _write(tmp_path, parts, state_change=poison)
    with pytest.raises(ValueError, match='non-finite'):
        _load(path)


def test_a_directory_or_device_is_reported_as_what_it_is(tmp_path):
    with pytest.raises(ValueError, match='is a directory'):
        _load(tmp_path)
    if os.path.exists('/dev/zero'):
        with pytest.raises(ValueError, match='not a regular file'):
            _load(Path('/dev/zero'))
    with pytest.raises(FileNotFoundError, match='does not exist'):
        _load(tmp_path / 'nope.safetensors')


def test_the_valid_checkpoint_still_loads(tiny_checkpoint):
    seg = _load(tiny_checkpoint)
    assert seg.input_hw == (60, 80) and len(seg.colors) == len(seg.classes)
    assert all(torch.isfinite(p).all() for p in seg.model.parameters())
