"""No node or tool contacts the network (issue 21): onnxruntime's telemetry is switched off
before any InferenceSession is created."""

from __future__ import annotations

import onnxruntime
import pytest

from rmseg_ros.inference import segmenter as inference


def test_onnx_sessions_are_created_with_telemetry_disabled(monkeypatch, tmp_path):
    calls: list[str] = []
    real_disable = onnxruntime.disable_telemetry_events
    real_session = onnxruntime.InferenceSession

    def disable() -> None:
        calls.append('disable')
        real_disable()

    def session(*args, **kwargs):
        calls.append('session')
        return real_session(*args, **kwargs)

    monkeypatch.setattr(onnxruntime, 'disable_telemetry_events', disable)
    monkeypatch.setattr(onnxruntime, 'InferenceSession', session)
    with pytest.raises(Exception, match=r'missing\.onnx'):  # no model: creation itself fails
        inference.Segmenter._onnx_session(None, tmp_path / 'missing.onnx', 'cpu', 1)
    assert calls == ['disable', 'session']


def test_the_readme_says_nothing_contacts_the_network():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / 'README.md').read_text()
    assert 'contacts the network' in text and 'telemetry' in text
