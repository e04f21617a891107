"""One daemon per port: a second daemon on a served bridge is refused and changes nothing.

A guest loops on requests in the background the whole time; every one of them must
succeed while the second daemon tries its luck, with another --name and with the same.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import write_records
from transparent_md.lab.hypervisor import Hypervisor

pytestmark = pytest.mark.netns

PATH = "/latest/meta-data/instance-id"
# A guest that asks every 50 ms until told to stop, then prints its tally.
LOOP = r"""
import json, sys, time, urllib.request
ok = failed = 0
deadline = time.monotonic() + float(sys.argv[1])
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen("http://169.254.169.254/latest/meta-data/instance-id",
                                    timeout=2) as reply:
            ok += reply.read() == b"i-0"
    except Exception:
        failed += 1
    time.sleep(0.05)
print(json.dumps({"ok": ok, "failed": failed}))
"""


@pytest.fixture(scope="module")
def hv(topology, tmp_path_factory):
    hv = Hypervisor(topology)
    hv.bridge("br0")
    guest = hv.guest("g0", bridge="br0", port="p0", addr="10.0.0.10/24",
                     routes=["169.254.169.254/32 dev eth0"])
    hv.store = str(tmp_path_factory.mktemp("store") / "instances.db")
    write_records(hv.store, [{"instance_id": "i-0", "mac": guest.mac}])
    return hv


def second_run(hv: Hypervisor, *extra: str) -> subprocess.CompletedProcess:
    return hv.topo.sh(hv.ns, [sys.executable, "-m", "transparent_md", "run", "--bridge", "br0",
                              "--store", hv.store, *extra], timeout=120)


def test_a_second_daemon_is_refused_and_the_first_keeps_serving(hv):
    first = hv.start_daemon(["br0"], hv.store)
    try:
        looper = subprocess.Popen(["ip", "netns", "exec", hv.guests["g0"].ns, sys.executable,
                                   "-c", LOOP, "12"], stdout=subprocess.PIPE, text=True)
        other_name = second_run(hv, "--name", "other")
        same_name = second_run(hv)
        tally = json.loads(looper.communicate(timeout=60)[0])
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
