"""A guest that keeps asking for its instance-id while something is done to the daemon
(a reload, a second daemon, a restart), then tells how many answers were right."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import write_records
from transparent_md.lab.hypervisor import Hypervisor

# Asks every 20 ms for `seconds`, then prints {"ok": n, "failed": n} on stdout.
LOOP = r"""
import json, sys, time, urllib.request
expected, seconds = sys.argv[1].encode(), float(sys.argv[2])
ok = failed = 0
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen("http://169.254.169.254/latest/meta-data/instance-id",
                                    timeout=2) as reply:
            ok += reply.read() == expected
    except Exception:
        failed += 1
    time.sleep(0.02)
print(json.dumps({"ok": ok, "failed": failed}))
"""


class LoopingGuest:
    """Starts the loop in a guest namespace; `tally()` waits for it and reads the counts."""

    def __init__(self, guest_ns: str, instance_id: str, seconds: float) -> None:
        self.proc = subprocess.Popen(["ip", "netns", "exec", guest_ns, sys.executable, "-c",
                                      LOOP, instance_id, str(seconds)],
                                     stdout=subprocess.PIPE, text=True)

    def tally(self, timeout: float = 60) -> dict[str, int]:
        return json.loads(self.proc.communicate(timeout=timeout)[0])


def one_guest_hypervisor(topology, tmp_path_factory) -> Hypervisor:
    """Bridge br0 with guest g0 (port p0, on-link route to .254) and its record i-0."""
    hv = Hypervisor(topology)
    hv.bridge("br0")
    guest = hv.guest("g0", bridge="br0", port="p0", addr="10.0.0.10/24",
                     routes=["169.254.169.254/32 dev eth0"])
    hv.store = str(tmp_path_factory.mktemp("store") / "instances.db")
    write_records(hv.store, [{"instance_id": "i-0", "mac": guest.mac}])
    return hv


def scrape(hv: Hypervisor, address: str, path: str) -> tuple[int, str]:
    """GET http://ADDRESS/PATH (the daemon's metrics and health) from the hypervisor."""
    res = hv.topo.sh(hv.ns, ["curl", "-sS", "-m", "5", "-o", "-", "-w", "\n%{http_code}",
                             f"http://{address}{path}"])
    body, _, code = res.stdout.rpartition("\n")
    return int(code or 0), body
