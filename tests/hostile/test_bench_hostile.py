"""Acceptance 6: `transparent-md bench --hostile --quick` prints the hostile-neighbour
table (the victim's figures under every attack) and leaves no namespace behind.

The figures are not judged here (tests/hostile/test_*.py assert the acceptance bounds);
the table must carry every attack with real numbers."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from transparent_md.lab.bench import hostile

pytestmark = pytest.mark.netns

# The quick section takes ~20 s here; the rest is room for a busy machine.
TIMEOUT_S = 180
PREFIX = "tmdbh"


def test_bench_hostile_quick_table(tmp_path):
    out = tmp_path / "h.json"
    res = subprocess.run([sys.executable, "-m", "transparent_md", "bench", "--hostile",
                          "--quick", "--json", str(out), "--netns-prefix", PREFIX],
                         capture_output=True, text=True, timeout=TIMEOUT_S)
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads(out.read_text())["hostile"]
    rows = result["rows"]
    assert {r["attack"] for r in rows} == set(hostile.ATTACKS)
    for r in rows:
        assert r["requests"] > 0, r
        assert all(math.isfinite(r[k]) and r[k] >= 0 for k in ("p50_ms", "p99_ms")), r
        assert r["attacker"], r
        if r["attack"] in (hostile.WRK_KEEPALIVE, hostile.WRK_CLOSE):  # wrk really ran
            assert r["attacker"][0].isdigit(), r
    assert "| attack | protections | victim requests | failures | p50 ms | p99 ms |" \
        in res.stdout
    assert not [p.name for p in Path("/run/netns").iterdir() if p.name.startswith(PREFIX)]
