"""The shipped systemd unit: valid for systemd itself, and hardened (exposure <= 4.0).

`systemd-analyze` reads unit files without systemd running as PID 1. The unit names
the documented install path (/opt/transparent-md/venv); for `verify`, which checks that
ExecStart exists, a copy points at this checkout's venv instead.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "examples" / "transparent-md.service"
INSTALL_PREFIX = "/opt/transparent-md/venv"
MAX_EXPOSURE = 4.0

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                reason="systemd-analyze not installed")


def unit_for_this_checkout(tmp_path: Path) -> Path:
    venv = Path(sys.executable).parent.parent
    text = UNIT.read_text()
    assert INSTALL_PREFIX in text
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(INSTALL_PREFIX, str(venv)))
    return copy


def test_unit_passes_systemd_analyze_verify(tmp_path):
    res = subprocess.run(["systemd-analyze", "verify", "--man=no",
                          str(unit_for_this_checkout(tmp_path))],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and not res.stderr.strip(), res.stderr


def test_unit_is_hardened(tmp_path):
    res = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager",
                          str(unit_for_this_checkout(tmp_path))],
                         capture_output=True, text=True, timeout=60)
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", res.stdout)
    assert found, res.stdout[-2000:] + res.stderr
    assert float(found.group(1)) <= MAX_EXPOSURE, res.stdout[-3000:]


def test_unit_is_type_notify_with_a_file_limit():
    text = UNIT.read_text()
    assert re.search(r"^Type=notify$", text, re.M)
    assert re.search(r"^LimitNOFILE=\d+$", text, re.M)
    assert re.search(r"^ExecReload=.*-HUP", text, re.M)
