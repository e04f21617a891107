"""`transparent-md bench --quick` end to end: every section has numbers, nothing is left.

The figures themselves are not asserted (a loaded CI machine would fail them); the
report must carry each one with its target, and the run must remove every namespace
it made, including the daemon's responder namespace.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from transparent_md.lab.netns import NETNS_PREFIX_ENV

pytestmark = pytest.mark.netns

SERVERS = {"tc", "tc6", "loopback", "nft-dnat", "nginx-router", "floor-router", "nginx",
           "aiohttp", "raw"}
MODES = {"keep-alive", "new connection"}
# Whole quick run is ~30 s here, alone (the raw datapath's rows and storm included); the
# rest is room for a busy machine.
QUICK_TIMEOUT_S = 300
# After a timeout: time for the bench to remove its namespaces before SIGKILL.
CLEANUP_GRACE_S = 30
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# The bench's namespaces start with it, and with the test run's own base (tests/reaper.py).
NETNS_PREFIX = os.environ.get(NETNS_PREFIX_ENV, "tmd")[:28] + "bq"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench")
    paths = {"json": out / "r.json", "markdown": out / "r.md", "chart": out / "r.png"}
    res = run_bench(["--quick", "--netns-prefix", NETNS_PREFIX,
                     *(a for k, p in paths.items() for a in (f"--{k}", str(p)))],
                    QUICK_TIMEOUT_S)
    assert res.returncode == 0, res.stderr[-3000:]
    return {"report": json.loads(paths["json"].read_text()),
            "markdown": paths["markdown"].read_text(), "chart": paths["chart"],
            "stderr": res.stderr}


def run_bench(argv: list[str], timeout: float,
              grace: float = CLEANUP_GRACE_S) -> subprocess.CompletedProcess:
    """`bench ARGV` in a process group of its own. On timeout (or pytest's own) the whole
    group gets SIGTERM and `grace` seconds to remove its namespaces (the bench) and
    devices (its daemons) while its output is still read, then SIGKILL."""
    proc = subprocess.Popen([sys.executable, "-m", "transparent_md", "bench", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.communicate(timeout=grace)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _number(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def test_every_server_and_mode_has_figures(quick_run):
    loads = quick_run["report"]["loads"]
    assert {(x["server"], x["mode"]) for x in loads} == {(s, m) for s in SERVERS for m in MODES}
    for x in loads:
        assert x["requests"] > 0 and x["requests_per_s"] > 0, x
        for key in ("p50_ms", "p99_ms", "cpu_us_per_request", "peak_rss_mib"):
            assert _number(x[key]) and x[key] >= 0, (key, x)
        assert x["errors"] == 0, x  # a fast wrong answer must not count as a result


def test_storm_memory_and_ratio_sections(quick_run):
    r = quick_run["report"]
    storm = r["storm"]
    assert storm["guests"] > 0 and storm["requests"] >= storm["guests"] * 10
    for key in ("failures", "p50_ms", "p99_ms", "last_guest_done_s"):
        assert _number(storm[key]), key
    assert isinstance(storm["failure_causes"], dict)
    # The drivers' own CPU and how busy the host was: is the latency the daemon's?
    assert storm["drivers"] >= 1
    assert storm["driver_cpu_us_per_request"] > 0
    assert storm["driver_busiest_cpu_share"] > 0 and 0 < storm["host_cpu_busy"] <= 1
    # nstat in the daemon's responder namespace: the accept-queue counters are read.
    assert {"TcpExtListenOverflows", "TcpExtListenDrops"} <= set(storm["responder_tcp"])
    assert r["memory"]["records"] == 10_000 and r["memory"]["rss_mib"] > 0
    assert set(r["tc_over_nginx_cpu"]) == MODES
    # The raw-socket datapath: its rows held against the same nginx rounds, its storm.
    assert set(r["raw_over_nginx_cpu"]) == MODES
    assert r["storm_raw"]["guests"] == storm["guests"] and r["storm_raw"]["requests"] > 0
    # The uvloop + httptools floor is held against the same nginx, round by round.
    assert {m: len(v) for m, v in r["floor_over_nginx_cpu"].items()} == {
        m: len(v) for m, v in r["tc_over_nginx_cpu"].items()}
    assert all(_number(x) and x > 0 for v in r["floor_over_nginx_cpu"].values() for x in v)
    assert set(r["tc_over_loopback"]) == MODES
    names = " | ".join(c["name"] for c in r["checks"])
    for part in ("CPU per request, tc path, keep-alive", "new connection", "tc path / loopback",
                 "storm failures", "storm p99", "daemon RSS"):
        assert part in names
    # A quick run's figures are indicative: every check is listed, none is judged.
    assert r["indicative"] is True
    assert all(c["target"] and c["ok"] is None for c in r["checks"])


def test_syscall_counts_for_daemon_and_nginx(quick_run):
    """strace -c figures: both servers, both modes, the usual calls among them."""
    counts = quick_run["report"]["syscalls"]
    assert {(c["server"], c["mode"]) for c in counts} == {
        (s, m) for s in ("tc", "nginx-router") for m in MODES}
    for c in counts:
        assert c["requests"] > 0 and c["per_request"] > 0, c
        if c["mode"] == "new connection":
            assert c["per_connection"] == c["per_request"]
            assert "accept4" in c["by_call"] and "close" in c["by_call"], c


def test_markdown_shows_targets_and_chart_is_png(quick_run):
    md = quick_run["markdown"]
    assert "| server | connection | requests/s |" in md
    for needle in ("transparent-md, tc path", "nginx", "aiohttp", "nft DNAT", "Boot storm",
                   "Daemon RSS", "(<= 8", "(<= 30", ">= 0.85x", "nginx on the bridge",
                   "system calls per request", "ListenOverflows", "uvloop + httptools floor",
                   "driver processes playing the guests"):
        assert needle in md, needle
    assert quick_run["chart"].read_bytes().startswith(PNG_MAGIC)


def test_quick_judges_nothing_and_help_matches_the_report(quick_run):
    md = quick_run["markdown"]
    assert md.startswith("# Benchmark: `transparent-md bench`")  # a whole document
    report = md.split("## The run\n\n", 1)[1]
    assert report.startswith("**Indicative figures only** (`bench --quick`")
    assert "MISSED" not in md and "| ok |" not in md and "not judged" in md
    assert "Protections off" not in md  # the quick hostile table has no such rows
    table = md.split("| server | connection | requests/s |", 1)[1].split("\n\n", 1)[0]
    rows = [line for line in table.splitlines()[2:] if line.startswith("| ")]
    helped = subprocess.run([sys.executable, "-m", "transparent_md", "bench", "--help"],
                            capture_output=True, text=True, timeout=60).stdout
    assert f"each round makes {len(rows)} runs" in " ".join(helped.split())


def namespaces_left(ns: dict) -> list[str]:
    """The run's namespaces still there, from the report's `namespaces`."""
    return [p.name for p in Path("/run/netns").iterdir()
            if p.name.startswith(ns["prefix"]) or p.name == ns["daemon_responder"]]


def test_no_namespace_left_behind(quick_run):
    ns = quick_run["report"]["namespaces"]
    assert ns["prefix"].startswith(NETNS_PREFIX) and ns["daemon_responder"]
    assert ns["daemon_responder"].startswith(ns["prefix"])  # --netns-prefix covers it too
    assert namespaces_left(ns) == []


def test_storm_only_runs_one_datapaths_storm_and_leaves_nothing():
    """`bench --storm-only raw`: the storm's figures as JSON, its namespaces removed."""
    res = run_bench(["--storm-only", "raw", "--storm-guests", "10", "--storm-window", "1",
                     "--records", "100", "--netns-prefix", NETNS_PREFIX], QUICK_TIMEOUT_S)
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(res.stdout)
    assert r["datapath"] == "raw"
    storm = r["storm"]
    assert storm["guests"] == 10 and storm["requests"] >= storm["guests"] * 10
    for key in ("failures", "p99_ms", "server_cpu_us_per_request"):
        assert _number(storm[key]), key
    assert isinstance(storm["failure_causes"], dict)
    ns = r["namespaces"]
    assert namespaces_left(ns) == []
