"""The tc programs on IPv6 frames through BPF_PROG_TEST_RUN: NAT46 there and back,
Neighbour Solicitations answered, Neighbour Discovery claims dropped.

Same fixtures as test_programs_packets (programs loaded once, fresh maps per test).
"""

from __future__ import annotations

import ctypes

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    in6_chksum,
)
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw

from tests.datapath import test_programs_packets as packets
from transparent_md.datapath import layout

pytestmark = pytest.mark.netns

loaded, maps = packets.loaded, packets.maps
TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT = (packets.TC_ACT_OK, packets.TC_ACT_SHOT,
                                           packets.TC_ACT_REDIRECT)
MD, GUEST_MAC, GW_MAC, ARP_MAC = packets.MD, packets.GUEST_MAC, packets.GW_MAC, packets.ARP_MAC
MD_PEER_MAC = packets.MD_PEER_MAC
run_port, run_md, counters, changed = (packets.run_port, packets.run_md, packets.counters,
                                       packets.changed)
EC2_MD6, LL_MD6 = "fd00:ec2::254", "fe80::a9fe:a9fe"
GUEST6, GUEST_LL = "fd00:1::10", "fe80::5054:ff:fe00:5"
GATEWAY6 = "fd00:1::1"
SOLICITED_NODE_MAC = "33:33:ff:00:00:01"


def request6(dst: str = EC2_MD6, src: str = GUEST6, mac: str = GUEST_MAC,
             flags: str = "S", sport: int = 40000) -> Ether:
    return (Ether(src=mac, dst=GW_MAC) / IPv6(src=src, dst=dst, hlim=64) /
            TCP(sport=sport, dport=80, flags=flags))


def tcp_checksum_valid(pkt: Ether) -> bool:
    fresh = Ether(bytes(pkt))
    layer = IP if IP in fresh else IPv6
    sent = fresh[TCP].chksum
    del fresh[TCP].chksum
    if layer is IP:
        del fresh[IP].chksum
    return Ether(bytes(fresh))[TCP].chksum == sent


def icmp6_checksum_valid(pkt: Ether) -> bool:
    ip6 = Ether(bytes(pkt))[IPv6]
    payload = bytes(ip6.payload)
    zeroed = payload[:2] + b"\0\0" + payload[4:]
    return in6_chksum(58, ip6, zeroed) == int.from_bytes(payload[2:4], "big")


def solicit(target: str, src: str = GUEST6, option: bool = True, hlim: int = 255,
            mac: str = GUEST_MAC) -> Ether:
    frame = (Ether(src=mac, dst=SOLICITED_NODE_MAC) /
             IPv6(src=src, dst="ff02::1:ff00:1", hlim=hlim) / ICMPv6ND_NS(tgt=target))
    return frame / ICMPv6NDOptSrcLLAddr(lladdr=mac) if option else frame


def answer_gateway6(maps, address: str = GATEWAY6) -> None:
    maps[layout.MAP_ND].update(layout.nd_key(packets.LOOPBACK_IFINDEX, address),
                               ctypes.c_uint8(1))


# -- the request path -----------------------------------------------------------------
@pytest.mark.parametrize("dst,flag", [(EC2_MD6, 0), (LL_MD6, layout.SLOT_LINK_LOCAL_MD)])
def test_ipv6_request_becomes_ipv4_from_a_shadow_slot(loaded, maps, dst, flag):
    src = GUEST6 if dst == EC2_MD6 else GUEST_LL
    verdict, out = run_port(loaded, request6(dst, src) / Raw(b"GET / HTTP/1.1\r\n\r\n"))
    assert verdict == TC_ACT_REDIRECT
    assert out[Ether].type == 0x0800 and out[Ether].dst == MD_PEER_MAC
    assert out[IP].src == "100.64.0.1" and out[IP].dst == MD and out[IP].ttl == 64
    assert packets.checksums_valid(out)
    assert bytes(out[Raw]) == b"GET / HTTP/1.1\r\n\r\n"
    slot = packets.read_slot(maps, 1)
    assert slot.flags == layout.SLOT_IPV6 | flag and slot.ip == 0
    assert layout.slot_ip(slot) == src and layout.mac_str(slot.mac) == GUEST_MAC
    assert layout.mac_str(slot.gw_mac) == GW_MAC


def test_ipv6_identities_are_apart_from_ipv4_and_from_each_other(loaded, maps):
    shadows = [run_port(loaded, frame)[1][IP].src for frame in (
        request6(), request6(sport=1), request6(src="fd00:1::11"), request6(dst=LL_MD6),
        packets.request(src="10.0.0.5"))]
    assert shadows == ["100.64.0.1", "100.64.0.1", "100.64.0.2", "100.64.0.3",
                       "100.64.0.4"]


@pytest.mark.parametrize("dst,flag", [(EC2_MD6, 0), (LL_MD6, layout.SLOT_LINK_LOCAL_MD)])
def test_reply_goes_back_as_ipv6_from_the_address_asked(loaded, maps, dst, flag):
    run_port(loaded, request6(dst, GUEST6))
    reply = (Ether(src=MD_PEER_MAC, dst="02:cc:00:00:00:01") /
             IP(src=MD, dst="100.64.0.1", ttl=1, tos=0x28) /
             TCP(sport=80, dport=40000, flags="SA") / Raw(b"i-abc"))
    verdict, out = run_md(loaded, reply)
    assert verdict == TC_ACT_REDIRECT
    assert out[Ether].type == 0x86DD
    assert out[Ether].dst == GUEST_MAC and out[Ether].src == GW_MAC
    assert out[IPv6].src == dst and out[IPv6].dst == GUEST6
    assert out[IPv6].hlim == 1 and out[IPv6].tc == 0x28  # a token reply's hop limit
    assert out[IPv6].plen == len(out[IPv6].payload)
    assert tcp_checksum_valid(out) and bytes(out[Raw]) == b"i-abc"


def test_only_a_syn_takes_a_slot_and_the_syn_bucket_counts_ipv6(loaded, maps):
    assert run_port(loaded, request6(flags="A"))[0] == TC_ACT_SHOT
    packets.configure(maps, syn_cost_ns=10**9, syn_burst_ns=10**9)
    before = counters(maps)
    verdicts = [run_port(loaded, request6(src=f"fd00:1::{i:x}"))[0] for i in range(1, 5)]
    assert verdicts.count(TC_ACT_REDIRECT) == 1
    assert changed(before, counters(maps))["drop:syn_rate"] == 3


def test_port_identity_quota_holds_for_ipv6_sources(loaded, maps):
    packets.configure(maps, port_identity_quota=3)
    before = counters(maps)
    verdicts = [run_port(loaded, request6(src=f"fd00:1::{i:x}"))[0] for i in range(1, 6)]
    assert verdicts == [TC_ACT_REDIRECT] * 3 + [TC_ACT_SHOT] * 2
    assert changed(before, counters(maps))["drop:port_quota"] == 2


def test_copied_mac_on_another_port_is_flagged_for_ipv6_too(loaded, maps):
    maps[layout.MAP_MAC_LOCKS].update(layout.mac_key(GUEST_MAC),
                                      ctypes.c_uint32(packets.OTHER_PORT_IFINDEX))
    assert run_port(loaded, request6())[0] == TC_ACT_REDIRECT
    assert packets.read_slot(maps, 1).flags & layout.SLOT_LOCKED_ELSEWHERE


ADDRESSED_TO_US_DROPPED = {
    "tcp-other-port": Ether() / IPv6(src=GUEST6, dst=EC2_MD6) / TCP(dport=22),
    "udp": Ether() / IPv6(src=GUEST6, dst=EC2_MD6) / UDP(dport=80),
    "ping": Ether() / IPv6(src=GUEST6, dst=LL_MD6) / ICMPv6EchoRequest(),
    "fragment": Ether() / IPv6(src=GUEST6, dst=EC2_MD6) / IPv6ExtHdrFragment() / TCP(dport=80),
    "hop-by-hop": Ether() / IPv6(src=GUEST6, dst=EC2_MD6) / IPv6ExtHdrHopByHop() / TCP(dport=80),
    "source-unspecified": Ether() / IPv6(src="::", dst=EC2_MD6) / TCP(dport=80),
    "source-multicast": Ether() / IPv6(src="ff02::1", dst=EC2_MD6) / TCP(dport=80),
    "source-loopback": Ether() / IPv6(src="::1", dst=EC2_MD6) / TCP(dport=80),
    "source-v4-mapped": Ether() / IPv6(src="::ffff:10.0.0.5", dst=EC2_MD6) / TCP(dport=80),
    "tagged": Ether() / Dot1Q(vlan=0) / IPv6(src=GUEST6, dst=EC2_MD6) / TCP(dport=80),
}


@pytest.mark.parametrize("name", sorted(ADDRESSED_TO_US_DROPPED))
def test_anything_else_to_the_ipv6_addresses_is_dropped(loaded, maps, name):
    assert run_port(loaded, ADDRESSED_TO_US_DROPPED[name])[0] == TC_ACT_SHOT


def test_other_ipv6_traffic_passes_untouched(loaded, maps):
    frame = Ether(src=GUEST_MAC, dst=GW_MAC) / IPv6(src=GUEST6, dst="fd00:1::20") / TCP(dport=80)
    verdict, out = run_port(loaded, frame)
    assert verdict == TC_ACT_OK and bytes(out) == bytes(frame)


# -- Neighbour Discovery ----------------------------------------------------------------
@pytest.mark.parametrize("target", [EC2_MD6, LL_MD6])
@pytest.mark.parametrize("option", [True, False])
def test_solicitation_for_a_metadata_address_is_answered_in_place(loaded, maps, target,
                                                                  option):
    src = GUEST_LL
    before = counters(maps)
    verdict, out = run_port(loaded, solicit(target, src=src, option=option))
    assert verdict == TC_ACT_REDIRECT
    assert out[Ether].dst == GUEST_MAC and out[Ether].src == ARP_MAC
    assert out[IPv6].src == target and out[IPv6].dst == src and out[IPv6].hlim == 255
    na = out[ICMPv6ND_NA]
    assert na.tgt == target and na.S == 1 and na.O == 1 and na.R == 0
    assert icmp6_checksum_valid(out)
    if option:
        assert out[ICMPv6NDOptDstLLAddr].lladdr == ARP_MAC
    assert changed(before, counters(maps)) == {"event:ns_answered": 1}


def test_gateway_solicitation_is_answered_as_a_router_on_its_port_only(loaded, maps):
    assert run_port(loaded, solicit(GATEWAY6))[0] == TC_ACT_OK  # not configured
    answer_gateway6(maps)
    verdict, out = run_port(loaded, solicit(GATEWAY6))
    assert verdict == TC_ACT_REDIRECT and out[ICMPv6ND_NA].R == 1
    assert icmp6_checksum_valid(out)


def test_no_metadata_arp_stops_ipv6_answers_too(loaded, maps):
    packets.configure(maps, flags=layout.CFG_MAC_LOCK)
    assert run_port(loaded, solicit(EC2_MD6))[0] == TC_ACT_OK


def test_solicitation_that_crossed_a_router_is_not_answered(loaded, maps):
    assert run_port(loaded, solicit(EC2_MD6, hlim=64))[0] == TC_ACT_OK


CLAIMS = {
    "advert-for-metadata": lambda: (Ether(src=GUEST_MAC, dst="33:33:00:00:00:01") /
                                    IPv6(src=GUEST_LL, dst="ff02::1", hlim=255) /
                                    ICMPv6ND_NA(tgt=EC2_MD6, R=0, S=0, O=1) /
                                    ICMPv6NDOptDstLLAddr(lladdr=GUEST_MAC)),
    "advert-for-link-local": lambda: (Ether(src=GUEST_MAC, dst="33:33:00:00:00:01") /
                                      IPv6(src=GUEST_LL, dst="ff02::1", hlim=255) /
                                      ICMPv6ND_NA(tgt=LL_MD6, R=0, S=0, O=1)),
    "advert-for-gateway": lambda: (Ether(src=GUEST_MAC, dst="33:33:00:00:00:01") /
                                   IPv6(src=GUEST_LL, dst="ff02::1", hlim=255) /
                                   ICMPv6ND_NA(tgt=GATEWAY6, R=1, S=0, O=1)),
    "solicit-from-metadata": lambda: solicit("fd00:1::20", src=EC2_MD6),
    "solicit-from-gateway": lambda: solicit("fd00:1::20", src=GATEWAY6),
    "dad-for-metadata": lambda: solicit(EC2_MD6, src="::", option=False),
}


@pytest.mark.parametrize("name", sorted(CLAIMS))
@pytest.mark.parametrize("tagged", [False, True])
def test_neighbour_discovery_claims_are_dropped(loaded, maps, name, tagged):
    answer_gateway6(maps)
    frame = CLAIMS[name]()
    if tagged:
        frame = Ether(src=frame.src, dst=frame.dst) / Dot1Q(vlan=0) / frame.payload
    before = counters(maps)
    assert run_port(loaded, frame)[0] == TC_ACT_SHOT
    reason = "tagged_nd_claim" if tagged else "nd_claim"
    if tagged and name == "dad-for-metadata":
        reason = "tagged_metadata"
    assert changed(before, counters(maps)) == {f"drop:{reason}": 1}


def test_neighbours_own_discovery_passes(loaded, maps):
    for frame in (solicit("fd00:1::20"),
                  Ether(src=GUEST_MAC) / IPv6(src=GUEST_LL, dst="ff02::1", hlim=255) /
                  ICMPv6ND_NA(tgt=GUEST6)):
        verdict, out = run_port(loaded, frame)
        assert verdict == TC_ACT_OK and bytes(out) == bytes(frame)
