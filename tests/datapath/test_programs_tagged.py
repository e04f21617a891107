"""Tagged and odd-hardware frames through the port program (BPF_PROG_TEST_RUN).

A guest may wrap what it sends in an 802.1Q priority tag (VID 0, which Linux takes as
untagged), a real VLAN tag, two tags (802.1ad or 802.1Q outside), or write ar_hrd=6
(IEEE 802, which Linux accepts on Ethernet). None of it may get an ARP claim of our
addresses or a frame for 169.254.169.254 past the port: each is dropped and counted
once, under its reason. Honest tagged traffic still goes to the bridge untouched.

The test runner leaves every tag in the packet; the kernel's receive path moves the
outer tag to skb->vlan_tci first, which tests/hostile/test_tagged_frames.py covers on
real ports.
"""

from __future__ import annotations

import ctypes

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Packet, Raw

from tests.datapath import test_programs_packets as packets
from transparent_md.datapath import layout
from transparent_md.datapath.bpf_syscall import prog_test_run

pytestmark = pytest.mark.netns

# The shared fixtures: the programs loaded once, fresh maps per test.
loaded, maps = packets.loaded, packets.maps
TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT = (packets.TC_ACT_OK, packets.TC_ACT_SHOT,
                                           packets.TC_ACT_REDIRECT)
MD, GUEST_MAC, GW_MAC, ARP_MAC = packets.MD, packets.GUEST_MAC, packets.GW_MAC, packets.ARP_MAC
GATEWAY, NEIGHBOUR, OWN_IP = "10.0.0.1", "10.0.0.6", "10.0.0.5"
BROADCAST = "ff:ff:ff:ff:ff:ff"
IEEE802 = 6  # ar_hrd of IEEE 802 networks

# Every way to wrap a payload, outermost tag first: (tag layers, TPID of the outer one).
TAGS: dict[str, tuple[list[Packet], int]] = {
    "priority-vid0": ([Dot1Q(vlan=0, prio=5)], 0x8100),
    "vid5": ([Dot1Q(vlan=5)], 0x8100),
    "8021ad-vid5": ([Dot1AD(vlan=5)], 0x88A8),
    "qinq-8021ad": ([Dot1AD(vlan=5), Dot1Q(vlan=7)], 0x88A8),
    "qinq-8021q": ([Dot1Q(vlan=5), Dot1Q(vlan=7)], 0x8100),
    "qinq-vid0-vid0": ([Dot1Q(vlan=0), Dot1Q(vlan=0)], 0x8100),
}


def wrap(payload: Packet, form: str, src: str = GUEST_MAC, dst: str = BROADCAST) -> Ether:
    """`payload` behind the tags of `form`, or none for "untagged"."""
    if form == "untagged":
        return Ether(src=src, dst=dst) / payload
    tags, tpid = TAGS[form]
    frame = Ether(src=src, dst=dst, type=tpid)
    for tag in tags:
        frame = frame / tag.copy()
    return frame / payload


def arp(hwtype: int = 1, **fields) -> ARP:
    """ARP with 6-byte hardware addresses whatever `hwtype` says (scapy sizes the
    addresses of a non-Ethernet type from its text, so the type is written last)."""
    raw = bytearray(bytes(ARP(**fields)))
    raw[0:2] = hwtype.to_bytes(2, "big")
    return ARP(bytes(raw))


def claim(op: int, claimed: str, target: str = NEIGHBOUR, hwtype: int = 1) -> ARP:
    return arp(hwtype, op=op, hwsrc=GUEST_MAC, psrc=claimed, pdst=target,
               hwdst=BROADCAST if op == 2 else "00:00:00:00:00:00")


def answer_gateway(maps) -> None:
    maps[layout.MAP_ARP].update(
        layout.ArpKey(packets.LOOPBACK_IFINDEX, layout.be32(GATEWAY)), ctypes.c_uint8(1))


def dropped_as(loaded, maps, frame: Ether, reason: str) -> None:
    before = packets.counters(maps)
    verdict, _ = prog_test_run(loaded.port_fd, bytes(frame))
    assert verdict == TC_ACT_SHOT, frame.summary()
    assert packets.changed(before, packets.counters(maps)) == {f"drop:{reason}": 1}


def passed_untouched(loaded, frame: Ether) -> None:
    raw = bytes(frame)
    assert prog_test_run(loaded.port_fd, raw) == (TC_ACT_OK, raw), frame.summary()


# -- ARP claims: every op, every wrapping, either hardware type ------------------------------
CLAIM_KINDS = {
    "request": lambda addr, hw: claim(1, addr, hwtype=hw),
    "reply": lambda addr, hw: claim(2, addr, hwtype=hw),
    "gratuitous-request": lambda addr, hw: claim(1, addr, addr, hwtype=hw),
    "gratuitous-reply": lambda addr, hw: claim(2, addr, addr, hwtype=hw),
}


@pytest.mark.parametrize("hwtype", [1, IEEE802, 0xFFFF])
@pytest.mark.parametrize("form", ["untagged", *TAGS])
@pytest.mark.parametrize("kind", sorted(CLAIM_KINDS))
@pytest.mark.parametrize("claimed", [MD, GATEWAY])
def test_arp_claims_are_dropped_in_every_form(loaded, maps, claimed, kind, form, hwtype):
    answer_gateway(maps)
    reason = "arp_claim" if form == "untagged" else "tagged_arp_claim"
    dropped_as(loaded, maps, wrap(CLAIM_KINDS[kind](claimed, hwtype), form), reason)


@pytest.mark.parametrize("hwtype", [1, IEEE802])
@pytest.mark.parametrize("form", ["untagged", *TAGS])
def test_a_guest_announcing_its_own_address_passes_in_every_form(loaded, maps, form, hwtype):
    answer_gateway(maps)
    passed_untouched(loaded, wrap(claim(2, OWN_IP, hwtype=hwtype), form))
    passed_untouched(loaded, wrap(claim(1, OWN_IP, NEIGHBOUR, hwtype=hwtype), form))


def test_an_ieee802_request_for_the_metadata_address_is_answered(loaded, maps):
    frame = wrap(arp(IEEE802, op=1, hwsrc=GUEST_MAC, psrc=OWN_IP, pdst=MD), "untagged")
    verdict, out = packets.run_port(loaded, frame)
    assert verdict == TC_ACT_REDIRECT
    answer = out[ARP]
    assert (answer.op, answer.psrc, answer.pdst) == (2, MD, OWN_IP)
    assert bytes(answer.hwsrc) == layout.mac_bytes(ARP_MAC)
    assert answer.hwtype == IEEE802  # the requester's own kind of answer


# -- tagged frames for 169.254.169.254: dropped, never served nor flooded --------------------
TO_METADATA = {
    "syn": lambda: IP(src=OWN_IP, dst=MD) / TCP(sport=40000, dport=80, flags="S"),
    "ack": lambda: IP(src=OWN_IP, dst=MD) / TCP(sport=40000, dport=80, flags="A"),
    "udp": lambda: IP(src=OWN_IP, dst=MD) / UDP(dport=53),
    "arp-who-has": lambda: ARP(op=1, hwsrc=GUEST_MAC, psrc=OWN_IP, pdst=MD),
    "arp-who-has-ieee802": lambda: arp(IEEE802, op=1, hwsrc=GUEST_MAC, psrc=OWN_IP, pdst=MD),
}


@pytest.mark.parametrize("form", sorted(TAGS))
@pytest.mark.parametrize("what", sorted(TO_METADATA))
@pytest.mark.parametrize("dst", [ARP_MAC, GW_MAC, BROADCAST])
def test_tagged_frames_for_the_metadata_address_are_dropped(loaded, maps, what, form, dst):
    dropped_as(loaded, maps, wrap(TO_METADATA[what](), form, dst=dst), "tagged_metadata")
    assert packets.read_slot(maps, 1).ifindex == 0  # nothing took a slot


def test_the_same_syn_untagged_is_still_served(loaded, maps):
    verdict, out = packets.run_port(loaded, wrap(TO_METADATA["syn"](), "untagged", dst=ARP_MAC))
    assert verdict == TC_ACT_REDIRECT and packets.checksums_valid(out)


# -- honest tagged traffic, and what cannot be read ------------------------------------------
@pytest.mark.parametrize("form", sorted(TAGS))
def test_tagged_traffic_not_aimed_at_us_passes_untouched(loaded, maps, form):
    answer_gateway(maps)
    passed_untouched(loaded, wrap(IP(src=OWN_IP, dst="10.0.0.9") / TCP(dport=80), form, dst=GW_MAC))
    passed_untouched(loaded, wrap(ARP(op=1, hwsrc=GUEST_MAC, psrc=OWN_IP, pdst=GATEWAY), form))
    passed_untouched(loaded, wrap(Raw(b"\x60" + b"\0" * 60), form, dst=GW_MAC))


@pytest.mark.parametrize("form", sorted(TAGS))
def test_tagged_frames_to_our_arp_mac_are_dropped_not_flooded(loaded, maps, form):
    frame = wrap(IP(src=OWN_IP, dst="10.9.9.9") / TCP(dport=443), form, dst=ARP_MAC)
    dropped_as(loaded, maps, frame, "stray")


@pytest.mark.parametrize("payload", [
    claim(2, MD),
    IP(src=OWN_IP, dst=MD) / TCP(dport=80, flags="S"),
    IP(src=OWN_IP, dst="10.0.0.9") / TCP(dport=80),
])
def test_three_tags_are_dropped_unread(loaded, maps, payload):
    frame = (Ether(src=GUEST_MAC, dst=BROADCAST, type=0x8100) / Dot1Q(vlan=0) / Dot1Q(vlan=0) /
             Dot1Q(vlan=0) / payload)
    dropped_as(loaded, maps, frame, "too_many_tags")


def test_served_requests_after_tagged_garbage(loaded, maps):
    for form in TAGS:
        for make in TO_METADATA.values():
            prog_test_run(loaded.port_fd, bytes(wrap(make(), form, dst=ARP_MAC)))
    verdict, out = packets.run_port(loaded, packets.request())
    assert verdict == TC_ACT_REDIRECT and out[IP].src == "100.64.0.1"
