"""A test killed by its timeout leaves no daemon, etcd or namespace behind (tests/reaper.py).

A pytest of its own runs one test that starts `demo --fleet --hold` (a daemon, an etcd
member and their namespaces, all in a grandchild process tree) and then overruns its
timeout; pytest-timeout fails it. Afterwards nothing of that demo may remain.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_demo import namespaces, processes_naming

pytestmark = [pytest.mark.netns, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
INNER_TEST = '''
import re, signal, subprocess, sys, time

def test_overruns_its_timeout():
    demo = subprocess.Popen([sys.executable, "-m", "transparent_md", "demo", "--fleet",
                             "--hold"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    seen = []
    for line in demo.stdout:
        seen.append(line)
        if "Ctrl-C to clean up" in line:
            break
    prefix = re.search(r"hypervisor namespace (\\S+)-hv", "".join(seen)).group(1)
    with open(PREFIX_FILE, "w") as handle:
        handle.write(prefix)
    # Bring pytest-timeout's own alarm forward: the test now overruns at once.
    signal.setitimer(signal.ITIMER_REAL, 0.2)
    time.sleep(600)
'''


def test_a_timed_out_test_leaves_no_daemon_etcd_or_namespace(tmp_path):
    prefix_file = tmp_path / "prefix"
    inner = tmp_path / "test_inner.py"
    inner.write_text(f"PREFIX_FILE = {str(prefix_file)!r}\n" + INNER_TEST)
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.reaper",
         "--timeout", "280", "--rootdir", str(tmp_path), str(inner)],
        cwd=REPO, capture_output=True, text=True, timeout=290,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    assert prefix_file.exists(), res.stdout + res.stderr  # the demo came up
    assert "from pytest-timeout" in res.stdout, res.stdout + res.stderr
    assert res.returncode == 1, res.stdout + res.stderr
    prefix = prefix_file.read_text()
    assert not {ns for ns in namespaces() if ns.startswith(prefix)}
    assert not processes_naming(prefix)  # the daemon and etcd ran under `ip netns exec PREFIX-..`
    assert not processes_naming(f"tmd-{prefix}")  # etcd's cluster token
