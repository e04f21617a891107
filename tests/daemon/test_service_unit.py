"""The shipped systemd unit: valid for systemd itself, and hardened (exposure <= 4.0).

`systemd-analyze` reads unit files without systemd running as PID 1. The unit names
the documented install path (/opt/transparent-md/venv); for `verify`, which checks that
ExecStart exists, a copy points at this checkout's venv instead. The installed units are
checked the same way in tests/test_install.py and tests/test_package.py.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest

from tests.installed import systemd_analyze

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
    verify, _ = systemd_analyze(str(unit_for_this_checkout(tmp_path)), man=False)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr


def test_unit_is_hardened(tmp_path):
    _, exposure = systemd_analyze(str(unit_for_this_checkout(tmp_path)), man=False)
    assert exposure is not None and exposure <= MAX_EXPOSURE


def test_unit_is_type_notify_with_a_file_limit():
    text = UNIT.read_text()
    assert re.search(r"^Type=notify$", text, re.M)
    assert re.search(r"^LimitNOFILE=\d+$", text, re.M)
    assert re.search(r"^ExecReload=.*-HUP", text, re.M)
