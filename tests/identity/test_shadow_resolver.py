"""ShadowResolver against real pinned maps filled by the real port program.

The program runs through BPF_PROG_TEST_RUN (no namespaces): a SYN from a guest takes
slot 1, and the resolver turns shadow address 100.64.0.1 back into that guest.
"""

from __future__ import annotations

import ctypes
import socket

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from tests.pinned_maps import pinned_programs
from transparent_md.datapath import layout
from transparent_md.datapath.bpf_syscall import prog_test_run
from transparent_md.identity.shadow_map import ShadowResolver

pytestmark = pytest.mark.netns

SHADOW = "100.64.0.0/10"
GUEST_MAC = "02:00:00:00:00:05"
LOOPBACK = socket.if_nametoindex("lo")


@pytest.fixture()
def pinned():
    cfg = layout.Config(md_ifindex=4242, shadow_slots=100, flags=layout.CFG_MAC_LOCK,
                        slot_reuse_delay_ns=15 * 10**9)
    cfg.shadow_net, cfg.shadow_mask = layout.be32("100.64.0.0"), layout.be32("255.192.0.0")
    with pinned_programs(cfg) as (loaded, maps, pin_dir):
        maps[layout.MAP_PORTS].update(ctypes.c_uint32(LOOPBACK), layout.Port(b"br0", b"tap7"))
        # Fresh identity state: other tests' programs share no maps, but be explicit.
        for name in (layout.MAP_BY_GUEST, layout.MAP_MAC_LOCKS):
            loaded.table(name).clear()
        yield loaded, maps, pin_dir


def syn(src: str, mac: str = GUEST_MAC) -> bytes:
    return bytes(Ether(src=mac, dst="02:00:00:00:00:01") /
                 IP(src=src, dst="169.254.169.254") / TCP(dport=80, flags="S"))


def test_shadow_address_resolves_to_the_guest_that_asked(pinned):
    loaded, _, pin_dir = pinned
    prog_test_run(loaded.port_fd, syn("10.0.0.5"))
    prog_test_run(loaded.port_fd, syn("10.0.0.6"))
    resolve = ShadowResolver(pin_dir, SHADOW)
    first, second = resolve("100.64.0.1"), resolve("100.64.0.2")
    assert (first.bridge, first.port, first.ifindex) == ("br0", "tap7", LOOPBACK)
    assert (first.mac, first.ip) == (GUEST_MAC, "10.0.0.5")
    assert second.ip == "10.0.0.6"
    assert resolve("100.64.0.3") is None          # no such slot
    assert resolve("10.0.0.5") is None            # not a shadow address
    assert resolve("not-an-address") is None
    resolve.close()


def test_port_no_longer_ours_resolves_to_nobody(pinned):
    loaded, maps, pin_dir = pinned
    prog_test_run(loaded.port_fd, syn("10.0.0.5"))
    maps[layout.MAP_PORTS].delete(ctypes.c_uint32(LOOPBACK))
    assert ShadowResolver(pin_dir, SHADOW)("100.64.0.1") is None


def test_cache_holds_within_its_ttl_and_rereads_after(pinned):
    loaded, maps, pin_dir = pinned
    prog_test_run(loaded.port_fd, syn("10.0.0.5"))
    cached = ShadowResolver(pin_dir, SHADOW, cache_ttl_s=3600)
    uncached = ShadowResolver(pin_dir, SHADOW, cache_ttl_s=0)
    assert cached("100.64.0.1").ip == uncached("100.64.0.1").ip == "10.0.0.5"
    # Rewrite slot 1 behind the resolvers' backs (what a slot reuse would do).
    entry = layout.Slot()
    maps[layout.MAP_SLOTS].lookup(ctypes.c_uint32(1), entry)
    entry.ip = layout.be32("10.0.0.9")
    maps[layout.MAP_SLOTS].update(ctypes.c_uint32(1), entry)
    assert cached("100.64.0.1").ip == "10.0.0.5"
    assert uncached("100.64.0.1").ip == "10.0.0.9"


def test_a_mac_locked_to_another_port_resolves_flagged(pinned):
    loaded, maps, pin_dir = pinned
    prog_test_run(loaded.port_fd, syn("10.0.0.5"))
    copied = "02:00:00:00:00:66"
    maps[layout.MAP_MAC_LOCKS].update(layout.mac_key(copied), ctypes.c_uint32(LOOPBACK + 1))
    prog_test_run(loaded.port_fd, syn("10.0.0.5", mac=copied))
    resolve = ShadowResolver(pin_dir, SHADOW)
    assert resolve("100.64.0.1").locked_elsewhere is False
    forged = resolve("100.64.0.2")
    assert (forged.mac, forged.ip, forged.locked_elsewhere) == (copied, "10.0.0.5", True)
    resolve.close()
