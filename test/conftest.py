"""Shared pytest fixtures: loopback-only ROS environment, one ROS_DOMAIN_ID per test, helpers
to start a Python child process that publishes or subscribes over real DDS."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# No discovery traffic may leave loopback, whoever starts nodes in this test run.
os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
os.environ.setdefault('FASTDDS_BUILTIN_TRANSPORTS', 'LARGE_DATA')
os.environ.setdefault('HOME', str(REPO))  # rcl logging needs HOME
os.environ.setdefault('ROS_LOG_DIR', str(REPO / 'log' / 'ros'))

_domain_counter = itertools.count()


def _next_domain_id() -> int:
    """A domain id unique inside this run and unlikely to clash with a parallel run (0..101)."""
    return 1 + (os.getpid() * 13 + next(_domain_counter)) % 100


@pytest.fixture
def ros_domain(monkeypatch: pytest.MonkeyPatch) -> int:
    """Give the test its own ROS_DOMAIN_ID (in this process and in children it starts)."""
    domain = _next_domain_id()
    monkeypatch.setenv('ROS_DOMAIN_ID', str(domain))
    monkeypatch.setenv('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    return domain


@pytest.fixture
def rclpy_context(ros_domain: int) -> Iterator[object]:
    """An initialised rclpy Context on the test's domain, shut down afterwards."""
    import rclpy
    from rclpy.context import Context

    context = Context()
    rclpy.init(context=context, domain_id=ros_domain)
    try:
        yield context
    finally:
        context.try_shutdown()


@pytest.fixture
def spawn_python(ros_domain: int) -> Iterator[object]:
    """Start `python -c CODE` (or a script path with args) in a child process on the test's domain.

    The child inherits LD_LIBRARY_PATH (the ROS wheels need it) and is killed at teardown.
    """
    children: list[subprocess.Popen] = []

    def spawn(code: str | None = None, *, args: list[str] | None = None,
              env: dict[str, str] | None = None) -> subprocess.Popen:
        cmd = [sys.executable] + (['-c', code] if code is not None else []) + (args or [])
        child_env = dict(os.environ)
        child_env['ROS_DOMAIN_ID'] = str(ros_domain)
        child_env['PYTHONPATH'] = os.pathsep.join(
            p for p in [str(REPO), child_env.get('PYTHONPATH', '')] if p)
        child_env.update(env or {})
        proc = subprocess.Popen(cmd, env=child_env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        children.append(proc)
        return proc

    yield spawn
    for proc in children:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def write_tiny_checkpoint(path: Path, hw: tuple[int, int] = (60, 80), seed: int = 0,
                          classes: list[str] | None = None) -> Path:
    """A randomly initialised fusion checkpoint with the project's classes: enough for nodes to
    run end to end in tests (the demo uses the trained default weights)."""
    import torch

    from rmseg_ros.classes import ClassTable
    from rmseg_ros.frontend.preprocess import FrontendConfig
    from rmseg_ros.modalities import MODALITIES
    from rmseg_ros.models.checkpoint import export_metadata, save_checkpoint
    from rmseg_ros.models.fusion import FusionConfig, FusionSegNet

    table = ClassTable.load()
    names = list(classes or table.names)
    colors = [[(37 * i) % 256, (91 * i) % 256, (53 * i) % 256] for i in range(len(names))]
    if classes is None:
        colors = table.colors.tolist()
    torch.manual_seed(seed)
    cfg = FusionConfig(num_classes=len(names), widths=(8, 16, 32, 48), depths=(1, 1, 1, 1),
                       decoder_dim=16, attention_heads=2)
    model = FusionSegNet(cfg)
    front = FrontendConfig(height=hw[0], width=hw[1])
    save_checkpoint(path, model.state_dict(),
                    export_metadata('fusion', cfg, names, colors, MODALITIES, front, 'test'))
    return path


@pytest.fixture(scope='session')
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp('ckpt') / 'tiny.safetensors')
