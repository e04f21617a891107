"""Odd frames sent with scapy from a real guest namespace through the attached program
(or the raw datapath's socket and table: the module runs on both datapaths).

A tcpdump in the router's namespace shows which frames the port let through to the
bridge; one on the guest shows what came back. Each frame carries its own IP id, so
the captures say exactly which passed. The daemon must keep serving afterwards.
"""

from __future__ import annotations

import sys

import dpkt
import pytest

from tests.capture import Capture
from tests.conftest import write_records
from transparent_md.lab.hypervisor import Hypervisor

pytestmark = pytest.mark.netns

MD = "169.254.169.254"
GUEST_IP, FORGED_IP, ROUTER_IP = "10.0.0.5", "10.0.0.99", "10.0.0.1"

# IP id -> (what the frame is, whether the router sees it). Our program passes a frame
# with a cut IPv4 header to the bridge (not ours to judge), and Linux's bridge drops such
# runts itself: the router never sees it either way, so for it only "nothing broke" counts.
CASES = {
    101: ("tcp to .254 port 22", False),
    102: ("udp to .254", False),
    103: ("icmp echo to .254", False),
    104: ("tcp to .254:80 with IP options", False),
    105: ("first fragment to .254:80", False),
    106: ("later fragment to .254", False),
    107: ("vlan-tagged tcp to .254:80", False),
    108: ("truncated IPv4 header", False),
    109: ("truncated TCP header to .254", False),
    110: ("tcp to the router", True),
    111: ("forged source SYN to .254:80 (intercepted)", False),
}

SENDER = r"""
import sys
from scapy.all import Ether, IP, TCP, UDP, ICMP, Dot1Q, Raw, IPOption_RR, sendp
src_mac, router_mac, guest, forged, router = sys.argv[1:6]
md = "169.254.169.254"
eth = Ether(src=src_mac, dst=router_mac)
frames = [
    eth / IP(id=101, src=guest, dst=md) / TCP(dport=22, flags="S"),
    eth / IP(id=102, src=guest, dst=md) / UDP(dport=80) / Raw(b"x"),
    eth / IP(id=103, src=guest, dst=md) / ICMP(),
    eth / IP(id=104, src=guest, dst=md, options=[IPOption_RR()]) / TCP(dport=80, flags="S"),
    eth / IP(id=105, src=guest, dst=md, flags="MF") / TCP(dport=80, flags="S"),
    eth / IP(id=106, src=guest, dst=md, frag=100, proto=6) / Raw(b"y" * 40),
    eth / Dot1Q(vlan=7) / IP(id=107, src=guest, dst=md) / TCP(dport=80, flags="S"),
    Ether(bytes(eth / IP(id=108, src=guest, dst=md) / TCP(dport=80))[:14 + 12]),
    Ether(bytes(eth / IP(id=109, src=guest, dst=md, proto=6, len=28) / Raw(b"\0" * 8))),
    eth / IP(id=110, src=guest, dst=router) / TCP(dport=8080, flags="S"),
    eth / IP(id=111, src=forged, dst=md) / TCP(sport=40111, dport=80, flags="S"),
]
sendp(frames, iface="eth0", verbose=False)
"""


def ip_id(frame: bytes) -> int | None:
    """IP id of an (optionally 802.1Q-tagged) IPv4 frame, even a truncated one."""
    eth = dpkt.ethernet.Ethernet(frame)
    offset = 14 + 4 * len(getattr(eth, "vlan_tags", []) or [])
    ethertype = int.from_bytes(frame[offset - 2:offset], "big")
    if ethertype != 0x0800 or len(frame) < offset + 6:
        return None
    return int.from_bytes(frame[offset + 4:offset + 6], "big")


def forged_syn_acks(frames: list) -> list:
    """SYN-ACKs from 169.254.169.254 to the forged source's port."""
    found = []
    for frame in frames:
        eth = frame if isinstance(frame, dpkt.ethernet.Ethernet) else dpkt.ethernet.Ethernet(frame)
        ip = eth.data
        if (isinstance(ip, dpkt.ip.IP) and ip.dst == bytes([10, 0, 0, 99])
                and isinstance(ip.data, dpkt.tcp.TCP) and ip.data.dport == 40111
                and ip.data.flags & dpkt.tcp.TH_SYN and ip.data.flags & dpkt.tcp.TH_ACK):
            found.append(eth)
    return found


@pytest.fixture(scope="module")
def served(datapath_topology, tmp_path_factory, datapath):
    hv = Hypervisor(datapath_topology)
    hv.bridge("br0")
    router = hv.router("router", bridge="br0", port="prouter", addr=f"{ROUTER_IP}/24")
    guest = hv.guest("g", bridge="br0", port="pg", addr=f"{GUEST_IP}/24",
                     routes=[f"default via {ROUTER_IP}"])
    store = str(tmp_path_factory.mktemp("store") / "instances.db")
    write_records(store, [{"instance_id": "i-g", "mac": guest.mac}])
    daemon = hv.start_daemon(["br0"], store, datapath=datapath)
    yield hv, router, guest, tmp_path_factory.mktemp("pcap")
    daemon.stop()


def test_odd_frames_pass_or_drop_as_designed_and_service_continues(served):
    hv, router, guest, tmp = served
    at_router = Capture(hv, router.ns, str(tmp / "router.pcap"))
    at_guest = Capture(hv, guest.ns, str(tmp / "guest.pcap"), f"src host {MD}")
    send = hv.topo.sh(guest.ns, [sys.executable, "-c", SENDER, guest.mac, router.mac,
                                 GUEST_IP, FORGED_IP, ROUTER_IP])
    assert send.returncode == 0, send.stderr
    # The last frame the router must see is 110; wait for it, then judge all of them.
    seen_by_router = {ip_id(f) for f in at_router.frames(
        until=lambda frames: 110 in {ip_id(f) for f in frames})}
    for ident, (what, passes) in CASES.items():
        assert (ident in seen_by_router) == passes, f"{what}: passed={not passes}"

    # The forged SYN was intercepted and answered, to the forged address on this port.
    replies = [dpkt.ethernet.Ethernet(f) for f in at_guest.frames(until=forged_syn_acks)]
    assert forged_syn_acks(replies), "no SYN-ACK for the forged source came back"

    assert hv.curl(guest.ns, "/latest/meta-data/instance-id") == (200, "i-g")
