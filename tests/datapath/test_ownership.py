"""One daemon per port: a second daemon on a served bridge is refused and changes nothing.

A guest loops on requests in the background the whole time; every one of them must
succeed while the second daemon tries its luck, with another --name and with the same.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.looping_guest import LoopingGuest, one_guest_hypervisor
from transparent_md.lab.hypervisor import Hypervisor

pytestmark = pytest.mark.netns

PATH = "/latest/meta-data/instance-id"


@pytest.fixture(scope="module")
def hv(topology, tmp_path_factory):
    return one_guest_hypervisor(topology, tmp_path_factory)


def second_run(hv: Hypervisor, *extra: str) -> subprocess.CompletedProcess:
    return hv.topo.sh(hv.ns, [sys.executable, "-m", "transparent_md", "run", "--bridge", "br0",
                              "--store", hv.store, *extra], timeout=120)


def test_a_second_daemon_is_refused_and_the_first_keeps_serving(hv):
    first = hv.start_daemon(["br0"], hv.store)
    try:
        looper = LoopingGuest(hv.guests["g0"].ns, "i-0", 12)
        other_name = second_run(hv, "--name", "other")
        same_name = second_run(hv)
        tally = looper.tally()
        assert hv.curl(hv.guests["g0"].ns, PATH) == (200, "i-0")
        assert len(hv.our_filters("p0")) == 1
    finally:
        assert first.stop() == 0
    pid = str(first.proc.pid)
    assert other_name.returncode == 2, other_name.stderr
    lines = other_name.stderr.strip().splitlines()
    assert len(lines) == 1 and "port p0" in lines[0] and "'tmd'" in lines[0], lines
    assert same_name.returncode == 2, same_name.stderr
    lines = same_name.stderr.strip().splitlines()
    assert len(lines) == 1 and "already runs" in lines[0], lines
    # `ip netns exec` execs, so the daemon's PID is the Popen's.
    assert pid in lines[0], (pid, lines)
    assert tally["failed"] == 0 and tally["ok"] > 50, tally
