"""A real dnsmasq serving the helper's dnsmasq lines gives a real client the metadata route.

Hypervisor namespace: bridge br0 (10.0.0.1/24) running dnsmasq. Guest namespace: eth0
on a veth port of br0, running busybox udhcpc with tests/udhcpc_routes.sh. Only
namespaces with this run's prefix are created, and they are removed even on failure.
The last tests then start `transparent-md run` on the bridge and fetch metadata over
the leased route through the tc datapath.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import write_records
from tests.dhcp_client import Lease, obtain_lease
from transparent_md.cli.dhcp_option import option_text, register
from transparent_md.lab.hypervisor import DaemonProcess
from transparent_md.lab.netns import Topology
from transparent_md.process import stop_process

DNSMASQ = "/usr/sbin/dnsmasq"
BRIDGE = "br0"
SERVER_CIDR = "10.0.0.1/24"
ROUTER = "10.0.0.1"
NEXT_HOP = "10.0.0.253"  # exists nowhere; the datapath will answer ARP for it
POOL = "10.0.0.10,10.0.0.100,255.255.255.0,1h"
GUEST_SUBNET = "10.0.0.0/24"
TAG = "meta"

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(
        not (Path(DNSMASQ).exists() and shutil.which("busybox")),
        reason="needs dnsmasq-base and busybox",
    ),
]


@dataclass
class Segment:
    topo: Topology
    hv: str
    guest: str
    workdir: Path


@pytest.fixture
def segment(tmp_path: Path) -> Iterator[Segment]:
    with Topology() as topo:
        hv = topo.add_ns("hv")
        topo.bridge(hv, BRIDGE)
        topo.ip(hv, f"addr add {SERVER_CIDR} dev {BRIDGE}")
        guest = topo.guest(hv, "g", bridge=BRIDGE, port="p0", addr=None)
        yield Segment(topo, hv, guest, tmp_path)


def helper_lines(*argv: str) -> str:
    """The CLI's dnsmasq output for these flags (through the real argument parser)."""
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="verb"))
    return option_text(parser.parse_args(["dhcp-option", *argv]))


def serve_and_lease(seg: Segment, option_lines: str, *, tag: str | None = None) -> Lease:
    """Start dnsmasq with `option_lines` on the bridge, get a lease in the guest, stop it."""
    conf = seg.workdir / "dnsmasq.conf"
    range_tag = f"set:{tag}," if tag else ""
    conf.write_text(
        f"dhcp-range={range_tag}{POOL}\n"
        f"dhcp-option=option:router,{ROUTER}\n"
        f"{option_lines}"
    )
    argv = [
        DNSMASQ, "--no-daemon", "--conf-file=" + str(conf),
        f"--interface={BRIDGE}", "--bind-interfaces", "--except-interface=lo",
        "--no-resolv", "--port=0", "--no-ping", "--dhcp-authoritative", "--user=root",
        f"--pid-file={seg.workdir / 'dnsmasq.pid'}",
        f"--dhcp-leasefile={seg.workdir / 'dnsmasq.leases'}",
    ]
    server = seg.topo.spawn(seg.hv, argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        lease = obtain_lease(seg.guest, "eth0", seg.workdir)
    finally:
        stop_process(server)
    print(f"dnsmasq.conf:\n{conf.read_text()}guest route table:", *lease.route_table, sep="\n")
    return lease


def test_on_link_route_reaches_guest(segment: Segment) -> None:
    lease = serve_and_lease(segment, helper_lines())
    assert lease.address.startswith("10.0.0.")
    assert lease.classless_routes == [("169.254.169.254/32", "0.0.0.0")]
    assert lease.ms_classless_routes == lease.classless_routes
    assert "169.254.169.254 dev eth0 scope link" in lease.route_table
    # Option 121 present and no --router: an RFC 3442 client has no default route.
    assert not [r for r in lease.route_table if r.startswith("default")]


def test_via_route_with_tag_reaches_guest(segment: Segment) -> None:
    lease = serve_and_lease(segment, helper_lines("--via", NEXT_HOP, "--tag", TAG), tag=TAG)
    assert lease.classless_routes == [("169.254.169.254/32", NEXT_HOP)]
    assert f"169.254.169.254 via {NEXT_HOP} dev eth0" in lease.route_table


def test_router_keeps_default_route(segment: Segment) -> None:
    lines = helper_lines("--router", ROUTER, "--route", "10.9.0.0/16,10.0.0.2")
    lease = serve_and_lease(segment, lines)
    assert lease.classless_routes == [
        ("169.254.169.254/32", "0.0.0.0"),
        ("10.9.0.0/16", "10.0.0.2"),
        ("0.0.0.0/0", ROUTER),
    ]
    table = lease.route_table
    assert f"default via {ROUTER} dev eth0" in table
    assert "169.254.169.254 dev eth0 scope link" in table
    assert "10.9.0.0/16 via 10.0.0.2 dev eth0" in table
    assert any(r.startswith(f"{GUEST_SUBNET} dev eth0") for r in table)


def test_tagged_option_is_not_sent_to_untagged_clients(segment: Segment) -> None:
    # The guest's range carries no tag, so the tagged option must not reach it.
    lease = serve_and_lease(segment, helper_lines("--tag", TAG))
    assert lease.classless_routes == []
    assert f"default via {ROUTER} dev eth0" in lease.route_table


# -- end to end: the leased route leads through the tc datapath to the responder ----------
def metadata_through_datapath(seg: Segment, lease: Lease, extra: tuple[str, ...] = ()) -> str:
    """Start `run` on br0, register the leased guest, fetch its instance-id with curl."""
    store = str(seg.workdir / "instances.db")
    write_records(store, [{"instance_id": "i-dhcp", "ip": lease.address, "bridge": BRIDGE}])
    daemon = DaemonProcess(seg.topo, seg.hv, ["--bridge", BRIDGE, "--store", store, *extra])
    try:
        daemon.wait_ready()
        res = seg.topo.sh(seg.guest, ["curl", "-sS", "-m", "5",
                                      "http://169.254.169.254/latest/meta-data/instance-id"])
        assert res.returncode == 0, res.stderr + daemon.log()
        return res.stdout
    finally:
        daemon.stop()


def test_on_link_route_leads_to_metadata_through_the_datapath(segment: Segment) -> None:
    lease = serve_and_lease(segment, helper_lines())
    assert "169.254.169.254 dev eth0 scope link" in lease.route_table
    # The guest ARPs for 169.254.169.254 itself; the port program answers.
    assert metadata_through_datapath(segment, lease) == "i-dhcp"


def test_via_next_hop_known_only_to_the_port_leads_to_metadata(segment: Segment) -> None:
    lease = serve_and_lease(segment, helper_lines("--via", NEXT_HOP))
    assert f"169.254.169.254 via {NEXT_HOP} dev eth0" in lease.route_table
    # Nobody holds NEXT_HOP: only the port's --gateway rule answers ARP for it.
    got = metadata_through_datapath(segment, lease, ("--gateway", f"{BRIDGE}={NEXT_HOP}"))
    assert got == "i-dhcp"


def test_router_option_keeps_default_route_and_metadata_still_answers(segment: Segment) -> None:
    lease = serve_and_lease(segment, helper_lines("--router", ROUTER))
    assert f"default via {ROUTER} dev eth0" in lease.route_table
    assert metadata_through_datapath(segment, lease) == "i-dhcp"
