"""The tc programs on scapy-built frames through BPF_PROG_TEST_RUN: bytes in, bytes out.

No namespaces: the kernel runs the program on the frame and reports the verdict and the
rewritten bytes (a redirect is reported, never carried out). The frame's device is the
test process's loopback, so port-keyed map entries use its ifindex.
"""

from __future__ import annotations

import ctypes
import socket
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_RR
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Raw, fuzz

from transparent_md.datapath import layout, programs
from transparent_md.datapath.bpf_syscall import BpfMap, prog_test_run
from transparent_md.datapath.port_limits import PortLimits, add_released

pytestmark = pytest.mark.netns

TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT = 0, 2, 7
MD = "169.254.169.254"
GUEST_MAC, GW_MAC = "02:00:00:00:00:05", "02:00:00:00:00:01"
MD_PEER_MAC, ARP_MAC = "02:aa:00:00:00:01", "02:bb:00:00:00:01"
LOOPBACK_IFINDEX = socket.if_nametoindex("lo")
# The kernel's test runner wants a whole IPv4/IPv6 header behind the Ethernet header.
MIN_TEST_RUN_FRAME = 14 + 40
FAKE_MD_IFINDEX = 4242  # only stored in the verdict, never used: nothing is sent
OTHER_PORT_IFINDEX = 4243  # a port that exists only in the maps (a MAC locked there)
# Slots reset per test: more than any test allocates.
RESET_SLOTS = 64
REUSE_DELAY_S = 15
HASH_MAPS = (layout.MAP_BY_GUEST, layout.MAP_ARP, layout.MAP_MAC_LOCKS,
             layout.MAP_PORT_USAGE, layout.MAP_PORT_RELEASED)


@pytest.fixture(scope="module")
def loaded():
    progs = programs.load_programs()
    yield progs
    progs.bpf.cleanup()


@pytest.fixture()
def maps(loaded):
    """Fresh config and empty identity maps for every test."""
    handles = {name: BpfMap(loaded.map_fd(name), owned=False) for name in layout.ALL_MAPS}
    for name in HASH_MAPS:
        loaded.table(name).clear()
    for i in range(1, RESET_SLOTS):
        handles[layout.MAP_SLOTS].update(ctypes.c_uint32(i), layout.Slot())
    handles[layout.MAP_NEXT_SLOT].update(ctypes.c_uint32(0), ctypes.c_uint64(0))
    cfg = layout.Config()
    cfg.shadow_net = layout.be32("100.64.0.0")
    cfg.shadow_mask = layout.be32("255.192.0.0")
    cfg.md_ifindex = FAKE_MD_IFINDEX
    cfg.shadow_slots = 1000
    cfg.md_mac[:] = layout.mac_bytes(MD_PEER_MAC)
    cfg.arp_mac[:] = layout.mac_bytes(ARP_MAC)
    cfg.flags = layout.CFG_ANSWER_METADATA_ARP | layout.CFG_MAC_LOCK
    cfg.port_identity_quota = 32
    cfg.port_mac_quota = 8
    cfg.slot_reuse_delay_ns = REUSE_DELAY_S * 10**9
    handles[layout.MAP_CONFIG].update(ctypes.c_uint32(0), cfg)
    # What attaching the port does: fresh counters, no locks.
    limits(handles).reset(LOOPBACK_IFINDEX)
    return handles


def limits(maps) -> PortLimits:
    return PortLimits(maps[layout.MAP_PORT_USAGE], maps[layout.MAP_PORT_RELEASED],
                      maps[layout.MAP_MAC_LOCKS], maps[layout.MAP_BY_GUEST])


def configure(maps, **fields) -> None:
    cfg = layout.Config()
    maps[layout.MAP_CONFIG].lookup(ctypes.c_uint32(0), cfg)
    for name, value in fields.items():
        setattr(cfg, name, value)
    maps[layout.MAP_CONFIG].update(ctypes.c_uint32(0), cfg)


def counters(maps) -> dict[str, int]:
    """Every event and drop counter, summed over CPUs: "event:name" / "drop:reason"."""
    found = {}
    for kind, map_name, names in (("event", layout.MAP_EVENTS, layout.Event),
                                  ("drop", layout.MAP_DROPS, layout.Drop)):
        for member in names:
            total = sum(maps[map_name].lookup_percpu_u64(member.value))
            found[f"{kind}:{member.name.lower()}"] = total
    return found


def changed(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {name: after[name] - before[name] for name in after if after[name] != before[name]}


def run_port(loaded, frame) -> tuple[int, Ether]:
    verdict, out = prog_test_run(loaded.port_fd, bytes(frame))
    return verdict, Ether(out)


def run_md(loaded, frame) -> tuple[int, Ether]:
    verdict, out = prog_test_run(loaded.md_fd, bytes(frame))
    return verdict, Ether(out)


def request(src: str = "10.0.0.5", sport: int = 40000, mac: str = GUEST_MAC,
            flags: str = "S", **tcp):
    return (Ether(src=mac, dst=GW_MAC) / IP(src=src, dst=MD) /
            TCP(sport=sport, dport=80, flags=flags, **tcp))


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
    "syn-ack-opens-nothing": Ether() / IP(src="10.0.0.5", dst=MD) / TCP(dport=80, flags="SA"),
    "rst-only": Ether() / IP(src="10.0.0.5", dst=MD) / TCP(dport=80, flags="R"),
}

# Frames with a cut IPv4 header are refused by BPF_PROG_TEST_RUN itself before the
# program runs; the namespace tests send those from a real guest instead.
PASSED_TO_BRIDGE = {
    "tcp-elsewhere": Ether() / IP(src="10.0.0.5", dst="10.0.0.1") / TCP(dport=80),
    "udp-elsewhere": Ether() / IP(src="10.0.0.5", dst="8.8.8.8") / UDP(dport=53),
    "vlan-tagged-elsewhere": Ether() / Dot1Q(vlan=7) / IP(src="10.0.0.5", dst="10.0.0.1") /
    TCP(dport=80),
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
    configure(maps, flags=0)
    assert run_port(loaded, arp_request(MD))[0] == TC_ACT_OK


# -- slots ----------------------------------------------------------------------------
def test_busy_slots_are_never_taken_over(loaded, maps):
    configure(maps, shadow_slots=2)
    assert run_port(loaded, request(src="10.0.0.5"))[1][IP].src == "100.64.0.1"
    assert run_port(loaded, request(src="10.0.0.6"))[1][IP].src == "100.64.0.2"
    # Both slots were seen just now: a third identity is refused, not given slot 1.
    assert run_port(loaded, request(src="10.0.0.7"))[0] == TC_ACT_SHOT
    assert layout.ip_from_be32(read_slot(maps, 1).ip) == "10.0.0.5"


# -- drop reasons: each drop counted once, under one reason --------------------------
DROP_REASONS = {
    "tcp-other-port": (Ether() / IP(src="10.0.0.5", dst=MD) / TCP(dport=22), "unserved"),
    "udp": (Ether() / IP(src="10.0.0.5", dst=MD) / UDP(dport=80), "unserved"),
    "source-multicast": (Ether() / IP(src="224.0.0.1", dst=MD) / TCP(dport=80), "bad_source"),
    "ack-without-slot": (request(flags="A"), "not_syn"),
    "rst-without-slot": (request(flags="R"), "not_syn"),
    "stray": (Ether(src=GUEST_MAC, dst=ARP_MAC) / IP(src="10.0.0.5", dst="10.9.9.9") / TCP(),
              "stray"),
    "arp-claims-metadata": (Ether(src=GUEST_MAC) / ARP(op=2, psrc=MD, pdst="10.0.0.6"),
                            "arp_claim"),
}


@pytest.mark.parametrize("name", sorted(DROP_REASONS))
def test_each_drop_is_counted_once_under_its_reason(loaded, maps, name):
    frame, reason = DROP_REASONS[name]
    before = counters(maps)
    assert prog_test_run(loaded.port_fd, bytes(frame))[0] == TC_ACT_SHOT
    assert changed(before, counters(maps)) == {f"drop:{reason}": 1}


def test_a_full_slot_table_counts_one_no_slot_drop(loaded, maps):
    configure(maps, shadow_slots=1)
    run_port(loaded, request(src="10.0.0.5"))
    before = counters(maps)
    assert run_port(loaded, request(src="10.0.0.6"))[0] == TC_ACT_SHOT
    assert changed(before, counters(maps)) == {"drop:no_slot": 1}


def test_replies_drop_with_their_own_reasons(loaded, maps):
    before = counters(maps)
    run_md(loaded, Ether() / IP(src=MD, dst="100.64.0.9") / TCP(sport=80))
    run_md(loaded, Ether() / IP(src="1.2.3.4", dst="100.64.0.9") / TCP(sport=80))
    assert changed(before, counters(maps)) == {"drop:reply_no_slot": 1, "drop:reply_unserved": 1}


def test_a_served_request_counts_events_and_no_drop(loaded, maps):
    before = counters(maps)
    run_port(loaded, request())
    run_port(loaded, request(flags="A"))
    assert changed(before, counters(maps)) == {
        "event:slot_allocated": 1, "event:request_redirected": 2}


# -- only a SYN takes a slot -----------------------------------------------------------
@pytest.mark.parametrize("flags", ["A", "R", "RA", "F", "FA", "SA", "SR", "PA", ""])
def test_only_a_syn_takes_a_slot(loaded, maps, flags):
    assert run_port(loaded, request(flags=flags))[0] == TC_ACT_SHOT
    assert read_slot(maps, 1).ifindex == 0
    assert run_port(loaded, request(flags="S"))[0] == TC_ACT_REDIRECT
    # Once the identity has its slot, the rest of the connection goes through.
    if flags:
        verdict, out = run_port(loaded, request(flags=flags))
        assert verdict == TC_ACT_REDIRECT and out[IP].src == "100.64.0.1"


def test_rst_flood_from_random_sources_takes_no_slot(loaded, maps):
    for n in range(50):
        frame = request(src=f"10.1.{n // 250}.{n % 250 + 1}", mac=f"02:00:00:00:01:{n:02x}",
                        flags="R")
        assert run_port(loaded, frame)[0] == TC_ACT_SHOT
    assert all(read_slot(maps, i).ifindex == 0 for i in range(1, RESET_SLOTS))


# -- per-port identity quota ----------------------------------------------------------
def test_port_identity_quota_drops_new_identities_only(loaded, maps):
    configure(maps, port_identity_quota=3)
    for n in range(3):
        assert run_port(loaded, request(src=f"10.0.0.{n + 1}"))[0] == TC_ACT_REDIRECT
    before = counters(maps)
    assert run_port(loaded, request(src="10.0.0.4"))[0] == TC_ACT_SHOT
    assert changed(before, counters(maps)) == {"drop:port_quota": 1}
    # Identities that already hold a slot keep being served, SYNs included.
    assert run_port(loaded, request(src="10.0.0.1", sport=2))[0] == TC_ACT_REDIRECT
    # One released (what the slot releaser does): room for one more.
    release_slot(maps, 1, long_ago=True)
    assert run_port(loaded, request(src="10.0.0.4"))[0] == TC_ACT_REDIRECT
    assert run_port(loaded, request(src="10.0.0.5"))[0] == TC_ACT_SHOT


def test_port_identity_quota_zero_means_no_limit(loaded, maps):
    configure(maps, port_identity_quota=0, port_mac_quota=0)
    for n in range(40):
        assert run_port(loaded, request(src=f"10.0.1.{n + 1}"))[0] == TC_ACT_REDIRECT


# -- per-port SYN bucket --------------------------------------------------------------
def syn_bucket(maps, rate: int, burst: int) -> None:
    cost = 10**9 // rate
    configure(maps, syn_cost_ns=cost, syn_burst_ns=cost * burst)


def test_syn_bucket_passes_a_burst_then_drops(loaded, maps):
    # One SYN per second with a burst of 3: the test's frames all arrive in far less.
    syn_bucket(maps, rate=1, burst=3)
    for sport in range(3):
        assert run_port(loaded, request(sport=sport))[0] == TC_ACT_REDIRECT
    before = counters(maps)
    assert run_port(loaded, request(sport=99))[0] == TC_ACT_SHOT
    assert changed(before, counters(maps)) == {"drop:syn_rate": 1}
    # Segments of open connections are not SYNs: never limited.
    assert run_port(loaded, request(sport=1, flags="A"))[0] == TC_ACT_REDIRECT


def test_syn_bucket_refills_with_time(loaded, maps):
    syn_bucket(maps, rate=1, burst=1)
    assert run_port(loaded, request(sport=1))[0] == TC_ACT_REDIRECT
    assert run_port(loaded, request(sport=2))[0] == TC_ACT_SHOT
    # Move the bucket's clock back one second: as if a second had passed.
    usage = port_usage(maps)
    usage.syn_tat_ns -= 10**9
    maps[layout.MAP_PORT_USAGE].update(ctypes.c_uint32(LOOPBACK_IFINDEX), usage)
    assert run_port(loaded, request(sport=3))[0] == TC_ACT_REDIRECT


def test_syn_bucket_is_off_when_rate_is_zero(loaded, maps):
    configure(maps, syn_cost_ns=0, syn_burst_ns=0)
    for sport in range(300):
        assert run_port(loaded, request(sport=sport))[0] == TC_ACT_REDIRECT


# -- MAC locks --------------------------------------------------------------------------
def lock_of(maps, mac: str) -> int | None:
    port = ctypes.c_uint32()
    return port.value if maps[layout.MAP_MAC_LOCKS].lookup(layout.mac_key(mac), port) else None


def port_usage(maps) -> layout.PortUsage:
    usage = layout.PortUsage()
    assert maps[layout.MAP_PORT_USAGE].lookup(ctypes.c_uint32(LOOPBACK_IFINDEX), usage)
    return usage


def test_first_slot_locks_the_mac_to_its_port(loaded, maps):
    run_port(loaded, request())
    assert lock_of(maps, GUEST_MAC) == LOOPBACK_IFINDEX
    assert read_slot(maps, 1).flags == 0
    usage = port_usage(maps)
    assert (usage.identities_taken, usage.macs_locked) == (1, 1)


def test_mac_locked_to_another_port_gets_a_flagged_slot(loaded, maps):
    victim_mac = "02:00:00:00:00:77"
    maps[layout.MAP_MAC_LOCKS].update(layout.mac_key(victim_mac),
                                      ctypes.c_uint32(OTHER_PORT_IFINDEX))
    before = counters(maps)
    verdict, out = run_port(loaded, request(mac=victim_mac))
    # Still redirected, so the responder can answer 404 and log who tried.
    assert verdict == TC_ACT_REDIRECT
    assert read_slot(maps, 1).flags == layout.SLOT_LOCKED_ELSEWHERE
    assert lock_of(maps, victim_mac) == OTHER_PORT_IFINDEX
    assert changed(before, counters(maps)) == {
        "event:slot_allocated": 1, "event:forged_flagged": 1, "event:request_redirected": 1}
    assert port_usage(maps).macs_locked == 0


def test_without_mac_lock_a_mac_locks_nothing_and_is_never_flagged(loaded, maps):
    configure(maps, flags=layout.CFG_ANSWER_METADATA_ARP)  # --no-mac-lock
    victim_mac = "02:00:00:00:00:78"
    maps[layout.MAP_MAC_LOCKS].update(layout.mac_key(victim_mac),
                                      ctypes.c_uint32(OTHER_PORT_IFINDEX))
    assert run_port(loaded, request(mac=victim_mac))[0] == TC_ACT_REDIRECT
    assert read_slot(maps, 1).flags == 0
    assert run_port(loaded, request(mac="02:00:00:00:00:79"))[0] == TC_ACT_REDIRECT
    assert lock_of(maps, "02:00:00:00:00:79") is None


def test_mac_quota_drops_a_new_mac_but_not_a_locked_one(loaded, maps):
    configure(maps, port_mac_quota=2)
    assert run_port(loaded, request(mac="02:00:00:00:0a:01"))[0] == TC_ACT_REDIRECT
    assert run_port(loaded, request(mac="02:00:00:00:0a:02"))[0] == TC_ACT_REDIRECT
    before = counters(maps)
    assert run_port(loaded, request(mac="02:00:00:00:0a:03"))[0] == TC_ACT_SHOT
    assert changed(before, counters(maps)) == {"drop:mac_quota": 1}
    assert lock_of(maps, "02:00:00:00:0a:03") is None
    # A locked MAC with a second address is no new lock.
    assert run_port(loaded, request(mac="02:00:00:00:0a:01", src="10.0.0.9"))[0] == \
        TC_ACT_REDIRECT
    # An operator releases one lock: room for the new MAC.
    maps[layout.MAP_MAC_LOCKS].delete(layout.mac_key("02:00:00:00:0a:02"))
    add_released(maps[layout.MAP_PORT_RELEASED], LOOPBACK_IFINDEX, macs=1)
    assert run_port(loaded, request(mac="02:00:00:00:0a:03"))[0] == TC_ACT_REDIRECT


def test_reattaching_a_port_keeps_its_locks_and_counts_them(loaded, maps):
    """A lock belongs to the link: re-attaching the same link (a rename, a move to
    another of our bridges, a restart) keeps it, and it still counts against the
    port's MAC quota."""
    configure(maps, port_mac_quota=1)
    run_port(loaded, request(mac="02:00:00:00:0b:01"))
    assert run_port(loaded, request(mac="02:00:00:00:0b:02"))[0] == TC_ACT_SHOT
    limits(maps).reset(LOOPBACK_IFINDEX)
    assert lock_of(maps, "02:00:00:00:0b:01") == LOOPBACK_IFINDEX
    # The slot and the lock it still holds are still counted against its quotas.
    assert (port_usage(maps).identities_taken, port_usage(maps).macs_locked) == (1, 1)
    assert run_port(loaded, request(mac="02:00:00:00:0b:02"))[0] == TC_ACT_SHOT


def test_a_syn_of_a_known_slot_takes_its_macs_free_lock(loaded, maps):
    """After `identity release` (or its holder's port went with nobody waiting), the
    next SYN of a slot with that MAC locks it, even a slot that was flagged."""
    victim_mac = "02:00:00:00:0b:07"
    maps[layout.MAP_MAC_LOCKS].update(layout.mac_key(victim_mac),
                                      ctypes.c_uint32(OTHER_PORT_IFINDEX))
    run_port(loaded, request(mac=victim_mac))
    assert read_slot(maps, 1).flags == layout.SLOT_LOCKED_ELSEWHERE
    run_port(loaded, request(mac=victim_mac))
    assert lock_of(maps, victim_mac) == OTHER_PORT_IFINDEX  # held: nothing taken
    maps[layout.MAP_MAC_LOCKS].delete(layout.mac_key(victim_mac))
    run_port(loaded, request(mac=victim_mac, flags="A"))
    assert lock_of(maps, victim_mac) is None                # only a SYN takes it
    run_port(loaded, request(mac=victim_mac))
    assert lock_of(maps, victim_mac) == LOOPBACK_IFINDEX
    assert port_usage(maps).macs_locked == 1


def test_forgetting_a_port_removes_only_its_locks(loaded, maps):
    run_port(loaded, request(mac="02:00:00:00:0c:01"))
    maps[layout.MAP_MAC_LOCKS].update(layout.mac_key("02:00:00:00:0c:02"),
                                      ctypes.c_uint32(OTHER_PORT_IFINDEX))
    limits(maps).forget(LOOPBACK_IFINDEX)
    assert lock_of(maps, "02:00:00:00:0c:01") is None
    assert lock_of(maps, "02:00:00:00:0c:02") == OTHER_PORT_IFINDEX


# -- ARP claims ---------------------------------------------------------------------------
def arp_from_guest(op: int, psrc: str, pdst: str = "10.0.0.6") -> Ether:
    return Ether(src=GUEST_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(op=op, hwsrc=GUEST_MAC,
                                                               psrc=psrc, pdst=pdst)


@pytest.mark.parametrize("op", [1, 2, 3])
def test_arp_claiming_the_metadata_address_is_dropped(loaded, maps, op):
    assert run_port(loaded, arp_from_guest(op, MD))[0] == TC_ACT_SHOT
    # Gratuitous (sender == target) too.
    assert run_port(loaded, arp_from_guest(op, MD, MD))[0] == TC_ACT_SHOT


def test_arp_claiming_this_ports_gateway_is_dropped_elsewhere_passes(loaded, maps):
    maps[layout.MAP_ARP].update(
        layout.ArpKey(LOOPBACK_IFINDEX, layout.be32("10.0.0.1")), ctypes.c_uint8(1))
    maps[layout.MAP_ARP].update(
        layout.ArpKey(OTHER_PORT_IFINDEX, layout.be32("10.0.0.254")), ctypes.c_uint8(1))
    assert run_port(loaded, arp_from_guest(2, "10.0.0.1"))[0] == TC_ACT_SHOT
    assert run_port(loaded, arp_from_guest(1, "10.0.0.1", "10.0.0.1"))[0] == TC_ACT_SHOT
    # Another port's gateway, or the guest's own address: its business.
    assert run_port(loaded, arp_from_guest(2, "10.0.0.254"))[0] == TC_ACT_OK
    assert run_port(loaded, arp_from_guest(2, "10.0.0.5"))[0] == TC_ACT_OK
    # Still answered when the guest asks for the gateway.
    assert run_port(loaded, arp_request("10.0.0.1"))[0] == TC_ACT_REDIRECT


# -- slot release and reuse ---------------------------------------------------------------
def now_ns() -> int:
    return time.monotonic_ns()  # CLOCK_MONOTONIC, the clock of bpf_ktime_get_ns()


def release_slot(maps, index: int, long_ago: bool) -> None:
    """What the slot releaser does: forget the identity, free the slot, count it."""
    slot = read_slot(maps, index)
    key = layout.GuestKey(ifindex=slot.ifindex, ip=slot.ip)
    key.mac[:] = bytes(slot.mac)
    assert maps[layout.MAP_BY_GUEST].delete(key)
    freed = now_ns() - (REUSE_DELAY_S + 1) * 10**9 if long_ago else now_ns()
    maps[layout.MAP_SLOTS].update(ctypes.c_uint32(index), layout.Slot(free_since_ns=freed))
    add_released(maps[layout.MAP_PORT_RELEASED], slot.ifindex, identities=1)


def test_a_released_slot_waits_the_reuse_delay(loaded, maps):
    configure(maps, shadow_slots=1)
    run_port(loaded, request(src="10.0.0.5"))
    release_slot(maps, 1, long_ago=False)
    # Freed just now: the responder may still cache its old identity.
    assert run_port(loaded, request(src="10.0.0.6"))[0] == TC_ACT_SHOT
    assert read_slot(maps, 1).ifindex == 0
    # Replies to a freed slot go nowhere.
    assert run_md(loaded, Ether() / IP(src=MD, dst="100.64.0.1") / TCP(sport=80))[0] == \
        TC_ACT_SHOT


def test_a_released_slot_is_reused_after_the_delay(loaded, maps):
    configure(maps, shadow_slots=2)
    run_port(loaded, request(src="10.0.0.5"))
    run_port(loaded, request(src="10.0.0.6"))
    assert run_port(loaded, request(src="10.0.0.7"))[0] == TC_ACT_SHOT
    release_slot(maps, 1, long_ago=True)
    verdict, out = run_port(loaded, request(src="10.0.0.7"))
    assert verdict == TC_ACT_REDIRECT and out[IP].src == "100.64.0.1"
    assert layout.ip_from_be32(read_slot(maps, 1).ip) == "10.0.0.7"
    # The released identity, asking again, gets a slot of its own when one is free.
    assert run_port(loaded, request(src="10.0.0.5"))[0] == TC_ACT_SHOT


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
