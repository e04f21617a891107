"""The tc programs on scapy-built frames through BPF_PROG_TEST_RUN: bytes in, bytes out.

No namespaces: the kernel runs the program on the frame and reports the verdict and the
rewritten bytes (a redirect is reported, never carried out). The frame's device is the
test process's loopback, so port-keyed map entries use its ifindex.
"""

from __future__ import annotations

import ctypes
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_RR
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Raw, fuzz

from transparent_md.datapath import layout, programs
from transparent_md.datapath.bpf_syscall import BpfMap, prog_test_run

pytestmark = pytest.mark.netns

TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT = 0, 2, 7
MD = "169.254.169.254"
GUEST_MAC, GW_MAC = "02:00:00:00:00:05", "02:00:00:00:00:01"
MD_PEER_MAC, ARP_MAC = "02:aa:00:00:00:01", "02:bb:00:00:00:01"
LOOPBACK_IFINDEX = socket.if_nametoindex("lo")
# The kernel's test runner wants a whole IPv4/IPv6 header behind the Ethernet header.
MIN_TEST_RUN_FRAME = 14 + 40
FAKE_MD_IFINDEX = 4242  # only stored in the verdict, never used: nothing is sent


@pytest.fixture(scope="module")
def loaded():
    progs = programs.load_programs()
    yield progs
    progs.bpf.cleanup()


@pytest.fixture()
def maps(loaded):
    """Fresh config and empty identity maps for every test."""
    handles = {name: BpfMap(loaded.map_fd(name), owned=False) for name in layout.ALL_MAPS}
    for name in (layout.MAP_BY_GUEST, layout.MAP_ARP):
        loaded.table(name).clear()
    for i in range(1, 16):
        handles[layout.MAP_SLOTS].update(ctypes.c_uint32(i), layout.Slot())
    handles[layout.MAP_NEXT_SLOT].update(ctypes.c_uint32(0), ctypes.c_uint64(0))
    cfg = layout.Config()
    cfg.shadow_net = layout.be32("100.64.0.0")
    cfg.shadow_mask = layout.be32("255.192.0.0")
    cfg.md_ifindex = FAKE_MD_IFINDEX
    cfg.shadow_slots = 1000
    cfg.md_mac[:] = layout.mac_bytes(MD_PEER_MAC)
    cfg.arp_mac[:] = layout.mac_bytes(ARP_MAC)
    cfg.flags = layout.CFG_ANSWER_METADATA_ARP
    cfg.slot_hold_ns = 300 * 10**9
    handles[layout.MAP_CONFIG].update(ctypes.c_uint32(0), cfg)
    return handles


def run_port(loaded, frame) -> tuple[int, Ether]:
    verdict, out = prog_test_run(loaded.port_fd, bytes(frame))
    return verdict, Ether(out)


def run_md(loaded, frame) -> tuple[int, Ether]:
    verdict, out = prog_test_run(loaded.md_fd, bytes(frame))
    return verdict, Ether(out)


def request(src: str = "10.0.0.5", sport: int = 40000, mac: str = GUEST_MAC, **tcp):
    return (Ether(src=mac, dst=GW_MAC) / IP(src=src, dst=MD) /
            TCP(sport=sport, dport=80, flags="S", **tcp))


def checksums_valid(pkt: Ether) -> bool:
    """Recompute with scapy and compare with what the program left in the frame."""
    fresh = Ether(bytes(pkt))
    ip_sum, tcp_sum = fresh[IP].chksum, fresh[TCP].chksum
    del fresh[IP].chksum
    del fresh[TCP].chksum
    rebuilt = Ether(bytes(fresh))
    return rebuilt[IP].chksum == ip_sum and rebuilt[TCP].chksum == tcp_sum


def read_slot(maps, slot: int) -> layout.Slot:
    entry = layout.Slot()
    assert maps[layout.MAP_SLOTS].lookup(ctypes.c_uint32(slot), entry)
    return entry


# -- the request path ------------------------------------------------------------------
def test_request_is_rewritten_to_shadow_and_redirected(loaded, maps):
    verdict, out = run_port(loaded, request() / Raw(b"GET / HTTP/1.0\r\n\r\n"))
    assert verdict == TC_ACT_REDIRECT
    assert out[IP].src == "100.64.0.1" and out[IP].dst == MD
    assert out[Ether].dst == MD_PEER_MAC
    assert checksums_valid(out)
    slot = read_slot(maps, 1)
    assert slot.ifindex == LOOPBACK_IFINDEX
    assert layout.ip_from_be32(slot.ip) == "10.0.0.5"
    assert layout.mac_str(slot.mac) == GUEST_MAC
    assert layout.mac_str(slot.gw_mac) == GW_MAC


def test_same_identity_keeps_its_slot_and_each_address_gets_its_own(loaded, maps):
    _, first = run_port(loaded, request(sport=1000))
    _, again = run_port(loaded, request(sport=1001))
    _, secondary = run_port(loaded, request(src="10.0.0.6", sport=1000))
    _, other_mac = run_port(loaded, request(mac="02:00:00:00:00:99", sport=1000))
    assert first[IP].src == again[IP].src == "100.64.0.1"
    assert secondary[IP].src == "100.64.0.2"
    assert other_mac[IP].src == "100.64.0.3"


def test_reply_restores_guest_address_and_macs(loaded, maps):
    run_port(loaded, request())
    reply = (Ether(src=MD_PEER_MAC, dst="02:cc:00:00:00:01") / IP(src=MD, dst="100.64.0.1") /
             TCP(sport=80, dport=40000, flags="SA") / Raw(b"i-abc"))
    verdict, out = run_md(loaded, reply)
    assert verdict == TC_ACT_REDIRECT
    assert out[IP].dst == "10.0.0.5" and out[IP].src == MD
    assert out[Ether].dst == GUEST_MAC and out[Ether].src == GW_MAC
    assert checksums_valid(out)
    assert bytes(out[Raw]) == b"i-abc"


@pytest.mark.parametrize("dst", ["100.64.0.9", "100.64.3.232", "100.128.0.1", "10.0.0.5"])
def test_reply_to_unknown_or_foreign_address_is_dropped(loaded, maps, dst):
    run_port(loaded, request())  # slot 1 exists; the others do not
    reply = Ether() / IP(src=MD, dst=dst) / TCP(sport=80, dport=40000)
    assert run_md(loaded, reply)[0] == TC_ACT_SHOT


def test_reply_not_from_metadata_port_address_is_dropped(loaded, maps):
    run_port(loaded, request())
    assert run_md(loaded, Ether() / IP(src="1.2.3.4", dst="100.64.0.1") / TCP())[0] == TC_ACT_SHOT
    assert run_md(loaded, Ether() / IP(src=MD, dst="100.64.0.1") / UDP())[0] == TC_ACT_SHOT


# -- what passes and what drops -------------------------------------------------------
ADDRESSED_TO_US_DROPPED = {
    "tcp-other-port": Ether() / IP(src="10.0.0.5", dst=MD) / TCP(dport=22),
    "udp": Ether() / IP(src="10.0.0.5", dst=MD) / UDP(dport=80),
    "icmp": Ether() / IP(src="10.0.0.5", dst=MD) / ICMP(),
    "ip-options": Ether() / IP(src="10.0.0.5", dst=MD, options=[IPOption_RR()]) / TCP(dport=80),
    "first-fragment": Ether() / IP(src="10.0.0.5", dst=MD, flags="MF") / TCP(dport=80),
    "later-fragment": Ether() / IP(src="10.0.0.5", dst=MD, frag=100) / Raw(b"x" * 40),
    "source-0.0.0.0": Ether() / IP(src="0.0.0.0", dst=MD) / TCP(dport=80),
    "source-multicast": Ether() / IP(src="224.0.0.1", dst=MD) / TCP(dport=80),
    "source-loopback": Ether() / IP(src="127.0.0.1", dst=MD) / TCP(dport=80),
    "truncated-tcp": Ether(bytes(Ether() / IP(src="10.0.0.5", dst=MD, proto=6))[:34 + 10]),
}

# Frames with a cut IPv4 header are refused by BPF_PROG_TEST_RUN itself before the
# program runs; the namespace tests send those from a real guest instead.
PASSED_TO_BRIDGE = {
    "tcp-elsewhere": Ether() / IP(src="10.0.0.5", dst="10.0.0.1") / TCP(dport=80),
    "udp-elsewhere": Ether() / IP(src="10.0.0.5", dst="8.8.8.8") / UDP(dport=53),
    "vlan-tagged": Ether() / Dot1Q(vlan=7) / IP(src="10.0.0.5", dst=MD) / TCP(dport=80),
    "arp-reply": Ether() / ARP(op=2, psrc="10.0.0.5", pdst=MD),
    "arp-other-target": Ether() / ARP(op=1, psrc="10.0.0.5", pdst="10.0.0.1"),
    "arp-probe": Ether() / ARP(op=1, psrc="0.0.0.0", pdst=MD),
    "ipv6": Ether(type=0x86DD) / Raw(b"\x60" + b"\x00" * 39),
}


@pytest.mark.parametrize("name", sorted(ADDRESSED_TO_US_DROPPED))
def test_addressed_to_metadata_but_not_served_is_dropped(loaded, maps, name):
    assert run_port(loaded, ADDRESSED_TO_US_DROPPED[name])[0] == TC_ACT_SHOT
    # nothing of it took a slot
    assert read_slot(maps, 1).ifindex == 0


@pytest.mark.parametrize("name", sorted(PASSED_TO_BRIDGE))
def test_everything_else_passes_untouched(loaded, maps, name):
    frame = bytes(PASSED_TO_BRIDGE[name])
    verdict, out = prog_test_run(loaded.port_fd, frame)
    assert verdict == TC_ACT_OK
    assert out == frame


def test_request_after_garbage_is_still_served(loaded, maps):
    for frame in list(ADDRESSED_TO_US_DROPPED.values()) + list(PASSED_TO_BRIDGE.values()):
        prog_test_run(loaded.port_fd, bytes(frame))
    verdict, out = run_port(loaded, request())
    assert verdict == TC_ACT_REDIRECT and checksums_valid(out)


@pytest.mark.parametrize("payload", [
    IP(src="10.0.0.5", dst="10.9.9.9") / TCP(dport=443),
    IP(src="10.0.0.5", dst="10.0.0.1") / ICMP(),
    Raw(b"\x60" + b"\x00" * 39),
])
def test_unserved_frames_to_our_arp_mac_are_dropped_not_flooded(loaded, maps, payload):
    ethertype = 0x86DD if isinstance(payload, Raw) else 0x0800
    frame = Ether(src=GUEST_MAC, dst=ARP_MAC, type=ethertype) / payload
    assert prog_test_run(loaded.port_fd, bytes(frame))[0] == TC_ACT_SHOT
    # The same frame to a real router's MAC goes to the bridge.
    frame[Ether].dst = GW_MAC
    assert prog_test_run(loaded.port_fd, bytes(frame))[0] == TC_ACT_OK


def test_metadata_request_to_our_arp_mac_is_still_served(loaded, maps):
    frame = Ether(src=GUEST_MAC, dst=ARP_MAC) / IP(src="10.0.0.5", dst=MD) / TCP(dport=80)
    assert prog_test_run(loaded.port_fd, bytes(frame))[0] == TC_ACT_REDIRECT


# -- ARP ------------------------------------------------------------------------------
def arp_request(target: str) -> Ether:
    return (Ether(src=GUEST_MAC, dst="ff:ff:ff:ff:ff:ff") /
            ARP(op=1, hwsrc=GUEST_MAC, psrc="10.0.0.5", pdst=target))


def test_arp_for_metadata_address_is_answered_in_place(loaded, maps):
    verdict, out = run_port(loaded, arp_request(MD))
    assert verdict == TC_ACT_REDIRECT
    arp = out[ARP]
    assert (out[Ether].dst, out[Ether].src) == (GUEST_MAC, ARP_MAC)
    assert (arp.op, arp.hwsrc, arp.psrc) == (2, ARP_MAC, MD)
    assert (arp.hwdst, arp.pdst) == (GUEST_MAC, "10.0.0.5")


def test_arp_for_configured_gateway_is_answered_only_on_its_port(loaded, maps):
    assert run_port(loaded, arp_request("10.0.0.1"))[0] == TC_ACT_OK
    maps[layout.MAP_ARP].update(
        layout.ArpKey(LOOPBACK_IFINDEX, layout.be32("10.0.0.1")), ctypes.c_uint8(1))
    verdict, out = run_port(loaded, arp_request("10.0.0.1"))
    assert verdict == TC_ACT_REDIRECT and out[ARP].psrc == "10.0.0.1"
    maps[layout.MAP_ARP].update(
        layout.ArpKey(LOOPBACK_IFINDEX + 1000, layout.be32("10.0.0.9")), ctypes.c_uint8(1))
    assert run_port(loaded, arp_request("10.0.0.9"))[0] == TC_ACT_OK


def test_metadata_arp_can_be_switched_off(loaded, maps):
    cfg = layout.Config()
    maps[layout.MAP_CONFIG].lookup(ctypes.c_uint32(0), cfg)
    cfg.flags = 0
    maps[layout.MAP_CONFIG].update(ctypes.c_uint32(0), cfg)
    assert run_port(loaded, arp_request(MD))[0] == TC_ACT_OK


# -- slots ----------------------------------------------------------------------------
def test_busy_slots_are_never_taken_over(loaded, maps):
    cfg = layout.Config()
    maps[layout.MAP_CONFIG].lookup(ctypes.c_uint32(0), cfg)
    cfg.shadow_slots = 2
    maps[layout.MAP_CONFIG].update(ctypes.c_uint32(0), cfg)
    assert run_port(loaded, request(src="10.0.0.5"))[1][IP].src == "100.64.0.1"
    assert run_port(loaded, request(src="10.0.0.6"))[1][IP].src == "100.64.0.2"
    # Both slots were seen just now: a third identity is refused, not given slot 1.
    assert run_port(loaded, request(src="10.0.0.7"))[0] == TC_ACT_SHOT
    assert layout.ip_from_be32(read_slot(maps, 1).ip) == "10.0.0.5"


# -- robustness -----------------------------------------------------------------------
# The map fixture resets state per test, not per example; examples do not depend on it.
FIXTURES_OK = [HealthCheck.function_scoped_fixture]


@settings(max_examples=300, deadline=None, suppress_health_check=FIXTURES_OK)
@given(st.binary(min_size=MIN_TEST_RUN_FRAME, max_size=200))
def test_random_bytes_never_crash_either_program(loaded, maps, data):
    for fd in (loaded.port_fd, loaded.md_fd):
        verdict, _ = prog_test_run(fd, data)
        assert verdict in (TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT)


@settings(max_examples=200, deadline=None, suppress_health_check=FIXTURES_OK)
@given(st.integers(0, 2**32 - 1))
def test_fuzzed_metadata_frames_keep_valid_checksums_when_served(loaded, maps, seed):
    import random

    random.seed(seed)
    frame = Ether(bytes(Ether(src=GUEST_MAC, dst=GW_MAC) / fuzz(IP(dst=MD, proto=6) / TCP())))
    verdict, out = prog_test_run(loaded.port_fd, bytes(frame))
    assert verdict in (TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT)
    if verdict == TC_ACT_REDIRECT:
        parsed = Ether(out)
        assert parsed[IP].src.startswith("100.")
        # Incremental update keeps a valid sum valid (and a broken one broken).
        assert checksums_valid(parsed) == checksums_valid(frame)
