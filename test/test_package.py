"""Package metadata and entry points behave as documented."""

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from training import cli

REPO = Path(__file__).resolve().parents[1]


def test_package_xml_declares_runtime_dependencies():
    root = ET.parse(REPO / 'package.xml').getroot()
    assert root.get('format') == '3'
    assert root.findtext('name') == 'rmseg_ros'
    exec_deps = {e.text for e in root.findall('exec_depend')}
    for dep in ['rclpy', 'sensor_msgs', 'std_msgs', 'geometry_msgs', 'diagnostic_msgs',
                'visualization_msgs', 'std_srvs', 'python3-numpy', 'python3-opencv',
                'python3-yaml']:
        assert dep in exec_deps
    assert 'python3-pytest' in {e.text for e in root.findall('test_depend')}
    assert root.find('export/build_type').text == 'ament_python'


def test_torch_is_pinned():
    lines = (REPO / 'requirements.txt').read_text().splitlines()
    torch_lines = [ln.strip() for ln in lines if ln.strip().startswith('torch')]
    assert torch_lines == ['torch==2.13.0']


def test_unbuilt_train_stage_fails_loudly(monkeypatch, capsys):
    monkeypatch.setitem(cli.STAGES, 'future', (None, 'a stage that has not landed'))
    assert cli.main(['future']) == 2
    assert 'not built yet' in capsys.readouterr().err


def test_train_help_lists_stages():
    out = subprocess.run([sys.executable, '-m', 'training.cli', '--help'], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    for stage in cli.STAGES:
        assert stage in out
