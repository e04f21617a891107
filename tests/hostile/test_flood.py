"""Acceptance 1: a raw-frame flood from random MACs and IPs denies no one.

One guest sends TCP segments to 169.254.169.254:80 (SYN, ACK, RST, data, FIN) from
random source MACs and IPs at full rate. During and after it, guests that never asked
before, on the same bridge and on another bridge, are answered on their first try
(a short curl, no retry), and a guest served before the flood stays served.

The flood asks for twice as many identities as the shadow-slot table holds: with the
per-port quotas and SYN rate switched off it fills the table and these guests are
refused (checked by hand with `--port-identity-quota 0 --port-syn-rate 0
--port-mac-quota 0`), so the test notices a regression.
It also reads the slots-in-use gauge during the flood: the attacker holds no more than
its port's quota, not the table.
"""

from __future__ import annotations

import time

import pytest

from tests.hostile.world import build_world, dump, metric_value, wait_seconds
from transparent_md.datapath.datapath import DEFAULT_PORT_IDENTITY_QUOTA
from transparent_md.lab.attacks.launch import TOOL_GRACE_S, Tool

pytestmark = pytest.mark.netns

# The count: at least this many segments must have been sent.
MIN_FRAMES = 100_000
# Normal run: long enough for fresh guests to ask while the flood goes on.
FLOOD_S = 10.0
# The full duration, in the slow variant.
SLOW_FLOOD_S = 60.0
# Fresh guests per bridge: some ask during the flood, some after it.
FRESH_PER_BRIDGE = 4
# Once the flood's first frames arrive, let it fill whatever it can before guests ask.
FLOOD_HEAD_START_S = 2.0
# The flood builds its frames first (longer on a busy machine); its first frames are
# seen in the datapath's drop counters.
FLOOD_START_TIMEOUT_S = 90.0
FLOOD_START_POLL_S = 0.2
# The flood's stray segments are dropped under this reason (only a SYN takes a slot).
NOT_SYN_DROPS = 'transparent_md_datapath_drops_total{reason="not_syn"}'
SLOTS_IN_USE = "transparent_md_shadow_slots_in_use"


@pytest.fixture(scope="module")
def world(datapath_topology, tmp_path_factory, datapath):
    w = build_world(datapath_topology, tmp_path_factory.mktemp("flood"), datapath)
    w.add_guest("attacker", "br0", record=False)
    w.add_guest("served", "br0")
    w.add_guest("served1", "br1")
    for br in ("br0", "br1"):
        for i in range(FRESH_PER_BRIDGE * 2):  # two runs (normal, slow) use separate ones
            w.add_guest(f"new{br[-1]}x{i}", br)
    w.start()
    yield w
    w.stop()


def metric(w, name: str) -> float:
    status, body = w.metrics()
    assert status == 200, body
    return metric_value(body, name)


def wait_flood_started(w, flood: Tool) -> float:
    """The time the flood's first frames reached the datapath (its stray segments are
    counted as drops); the flood itself first spends seconds building its frames."""
    before = metric(w, NOT_SYN_DROPS)
    deadline = time.monotonic() + FLOOD_START_TIMEOUT_S
    while time.monotonic() < deadline and flood.proc.poll() is None:
        if metric(w, NOT_SYN_DROPS) > before:
            return time.monotonic()
        time.sleep(FLOOD_START_POLL_S)
    exited = flood.proc.poll()
    said = flood.proc.stderr.read() if exited is not None else "(still running)"
    raise AssertionError(f"no flood frame reached the datapath (flood exit {exited}: "
                         f"{said}): {w.log_tail()}")


def flood_and_check(w, seconds: float, fresh_run: int) -> None:
    for role in ("served", "served1"):
        w.assert_serves(role)
    fresh = {br: [f"new{br[-1]}x{fresh_run * FRESH_PER_BRIDGE + i}"
                  for i in range(FRESH_PER_BRIDGE)] for br in ("br0", "br1")}
    flood = Tool(w.topo, w.guests["attacker"].ns, "flood",
                 ["--frames", str(10 ** 9), "--seconds", str(seconds)])
    started = wait_flood_started(w, flood)
    misses, slots_seen = [], []
    # During: half the fresh guests of each bridge, spread over the flood.
    during = [(br, fresh[br][i]) for i in range(FRESH_PER_BRIDGE // 2) for br in fresh]
    for k, (_br, role) in enumerate(during):
        wait_seconds(started + FLOOD_HEAD_START_S
                     + k * (seconds - FLOOD_HEAD_START_S) / (len(during) + 1))
        if flood.proc.poll() is not None:
            break
        slots_seen.append(metric(w, SLOTS_IN_USE))
        got = w.curl(role)
        if got[0] != 200:
            misses.append(("during", role, got))
        for served in ("served", "served1"):
            got = w.curl(served)
            if got[0] != 200:
                misses.append(("during", served, got))
    result = flood.result(seconds + TOOL_GRACE_S)
    assert flood.proc.returncode == 0
    assert result["sent"] >= MIN_FRAMES, dump(result)
    # After: the rest of the fresh guests, and everyone served before.
    for role in [r for br in fresh for r in fresh[br][FRESH_PER_BRIDGE // 2:]]:
        got = w.curl(role)
        if got[0] != 200:
            misses.append(("after", role, got))
    for role in ("served", "served1", *(r for _b, r in during)):
        got = w.curl(role)
        if got[0] != 200:
            misses.append(("after", role, got))
    _, metrics = w.metrics()
    print(f"flood: {dump(result)}; slots in use {slots_seen}; refused: {misses}")
    assert not misses, (f"flood {dump(result)}; refused: {misses}\n"
                        + "\n".join(line for line in metrics.splitlines()
                                    if "datapath" in line and not line.startswith("#")))
    # Mid-flood the table held the guests' identities and at most the attacker port's
    # quota, not the flood's (without the quotas it reaches the table's 65,535).
    assert slots_seen and max(slots_seen) <= DEFAULT_PORT_IDENTITY_QUOTA + len(w.guests), (
        slots_seen, dump(result))


def test_random_frame_flood_denies_no_one(world):
    flood_and_check(world, FLOOD_S, 0)


@pytest.mark.slow
def test_random_frame_flood_for_a_minute_denies_no_one(world):
    flood_and_check(world, SLOW_FLOOD_S, 1)
