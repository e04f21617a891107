"""Acceptance 3, on a real datapath: the libvirt hook (the example wrapper, driven as
libvirtd drives it, through the daemon's admin API) binds web-1's record to its tap
`vnet0`; the guest on vnet0 gets its data, and a guest on another port with the same
MAC and IP, asking first, gets nothing.

No qemu here (not installed, no guest image): each guest is a namespace on a veth
whose bridge end is named as libvirt names a tap (vnet0). DESIGN.md records that a
qemu guest on a real tap goes through the same tc programs unchanged.

The positive control shows the forger's request does reach the responder and would
be answered without the port binding: the same forgery against a record bound only to
MAC and bridge (what `--on-stop unbind` leaves) returns the victim's data.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from transparent_md.lab.hypervisor import Hypervisor

pytestmark = pytest.mark.netns

DOMAINS = Path(__file__).parent / "domains"
WRAPPER = Path(__file__).parents[2] / "examples" / "libvirt" / "qemu"
WEB1_MAC = "52:54:00:a1:00:01"  # as in domains/web-1.xml
CONTROL_MAC = "52:54:00:c0:00:01"
HOSTNAME = "/latest/meta-data/hostname"
USER_DATA = "/latest/user-data"


@pytest.fixture(scope="module")
def hv(topology, tmp_path_factory):
    hv = Hypervisor(topology)
    hv.bridge("br0")
    route = ["169.254.169.254/32 dev eth0"]
    hv.guest("web1", bridge="br0", port="vnet0", addr="10.0.0.21/24", mac=WEB1_MAC,
             routes=route)
    hv.guest("forger", bridge="br0", port="vnet1", addr="10.0.0.21/24", mac=WEB1_MAC,
             routes=route)
    hv.guest("control", bridge="br0", port="vnet2", addr="10.0.0.22/24", mac=CONTROL_MAC,
             routes=route)
    hv.guest("control-forger", bridge="br0", port="vnet3", addr="10.0.0.22/24",
             mac=CONTROL_MAC, routes=route)
    tmp = tmp_path_factory.mktemp("libvirt")
    hv.api = str(tmp / "api.sock")
    hv.daemon = hv.start_daemon(["br0"], str(tmp / "instances.db"), ["--api", hv.api])
    yield hv
    hv.daemon.stop()


def libvirtd_runs_hook(hv, domain: str, operation: str, xml: bytes) -> None:
    """/etc/libvirt/hooks/qemu DOMAIN OPERATION SUBOP EXTRA, the XML on stdin."""
    env = {**os.environ, "TMD_API": hv.api, "TMD_BRIDGES": "br0",
           "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    subop = "begin" if operation in ("prepare", "start", "started") else "end"
    result = subprocess.run([str(WRAPPER), domain, operation, subop, "-"], input=xml,
                            capture_output=True, env=env, timeout=30)
    assert result.returncode == 0 and result.stdout == b"", result.stderr


def test_without_a_port_binding_a_forger_asking_first_is_answered(hv):
    """Control: proves the forger's path works, so the next test's 404 means something."""
    xml = (DOMAINS / "web-1.xml").read_bytes().replace(b"web-1", b"ctl-1").replace(
        WEB1_MAC.encode(), CONTROL_MAC.encode()).replace(b"vnet0", b"vnet2")
    for operation in ("prepare", "start", "started", "stopped", "release"):
        libvirtd_runs_hook(hv, "ctl-1", operation, xml)  # bound, then unbound at stop
    status, body = hv.curl(hv.guests["control-forger"].ns, HOSTNAME)
    assert (status, body) == (200, "ctl-1")


def test_the_hook_binds_the_tap_and_a_forger_asking_first_gets_nothing(hv):
    xml = (DOMAINS / "web-1.xml").read_bytes()
    for operation in ("prepare", "start", "started"):
        libvirtd_runs_hook(hv, "web-1", operation, xml)
    forger, victim = hv.guests["forger"].ns, hv.guests["web1"].ns
    for path in (HOSTNAME, USER_DATA, "/openstack/latest/meta_data.json"):
        status, body = hv.curl(forger, path)  # first, before the victim ever asked
        assert status == 404 and "web-1" not in body, (path, status, body)
    assert hv.curl(victim, HOSTNAME) == (200, "web-1")
    status, body = hv.curl(victim, USER_DATA)
    assert status == 200 and body.startswith("#cloud-config")
    status, body = hv.curl(victim, "/openstack/latest/meta_data.json")
    assert status == 200 and "6c0f2a4e-9d3b-4a55-8e0a-6f1d2c3b4a51" in body
    assert hv.curl(forger, HOSTNAME)[0] == 404
