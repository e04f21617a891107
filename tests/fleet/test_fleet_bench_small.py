"""The fleet benchmark (scripts/bench-fleet) on a small scale: it runs, a cold start
resynchronises, a warm one does not, and every write reaches the daemon's cache."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.netns, pytest.mark.slow]


def test_bench_fleet_small():
    res = subprocess.run([sys.executable, "-m", "transparent_md.lab.bench.fleet",
                          "--records", "300", "--rate", "50", "--seconds", "2",
                          "--under-writes-s", "3", "--steady-s", "2"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    figures = json.loads(res.stdout)
    assert figures["cold_sync_s"] > 0 and figures["warm_sync_s"] == 0, figures
    assert figures["writes"] > 0 and figures["writes_seen"] == figures["writes"], figures
    assert figures["daemon_rss_mib"] > 0
    under = figures["under_writes"]
    assert under["daemons"] == 3 and under["etcd_members"] == 3, under
    assert under["guest_errors"] == under["status_errors"] == under["tracebacks"] == 0, under
    for name in ("guest_ms_steady", "guest_ms_writing_hv", "guest_ms_other_hvs", "write_ms"):
        assert under[name]["p50"] > 0 and under[name]["p99"] >= under[name]["p50"], under
