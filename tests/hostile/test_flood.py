"""Acceptance 1: a raw-frame flood from random MACs and IPs denies no one.

One guest sends TCP segments to 169.254.169.254:80 (SYN, ACK, RST, data, FIN) from
random source MACs and IPs at full rate. During and after it, guests that never asked
before, on the same bridge and on another bridge, are answered on their first try
(a short curl, no retry), and a guest served before the flood stays served.
"""

from __future__ import annotations

import time

import pytest

from tests.hostile.world import build_world, dump, wait_seconds
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
# Let the flood build frames (~1-2 s) and fill whatever it can before guests ask.
FLOOD_HEAD_START_S = 4.0


@pytest.fixture(scope="module")
def world(topology, tmp_path_factory):
    w = build_world(topology, tmp_path_factory.mktemp("flood"))
    w.add_guest("attacker", "br0", record=False)
    w.add_guest("served", "br0")
    w.add_guest("served1", "br1")
    for br in ("br0", "br1"):
        for i in range(FRESH_PER_BRIDGE * 2):  # two runs (normal, slow) use separate ones
            w.add_guest(f"new{br[-1]}x{i}", br)
    w.start()
    yield w
    w.stop()


def flood_and_check(w, seconds: float, fresh_run: int) -> None:
    for role in ("served", "served1"):
        w.assert_serves(role)
    fresh = {br: [f"new{br[-1]}x{fresh_run * FRESH_PER_BRIDGE + i}"
                  for i in range(FRESH_PER_BRIDGE)] for br in ("br0", "br1")}
    flood = Tool(w.topo, w.guests["attacker"].ns, "flood",
                 ["--frames", str(10 ** 9), "--seconds", str(seconds)])
    started = time.monotonic()
    misses = []
    # During: half the fresh guests of each bridge, spread over the flood.
    during = [(br, fresh[br][i]) for i in range(FRESH_PER_BRIDGE // 2) for br in fresh]
    for k, (_br, role) in enumerate(during):
        wait_seconds(started + FLOOD_HEAD_START_S
                     + k * (seconds - FLOOD_HEAD_START_S) / (len(during) + 1))
        if flood.proc.poll() is not None:
            break
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
    print(f"flood: {dump(result)}; refused: {misses}")
    assert not misses, (f"flood {dump(result)}; refused: {misses}\n"
                        + "\n".join(line for line in metrics.splitlines()
                                    if "datapath" in line and not line.startswith("#")))


def test_random_frame_flood_denies_no_one(world):
    flood_and_check(world, FLOOD_S, 0)


@pytest.mark.slow
def test_random_frame_flood_for_a_minute_denies_no_one(world):
    flood_and_check(world, SLOW_FLOOD_S, 1)
