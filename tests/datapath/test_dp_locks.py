"""MAC locks for the operator: listed with their port, released early, counted.

The real port program takes the lock (BPF_PROG_TEST_RUN on a SYN); list_locks and
release_mac work from the pins alone, as the CLI does from another process.
"""

from __future__ import annotations

import ctypes
import socket

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from tests.pinned_maps import pinned_programs
from transparent_md.datapath import layout, locks
from transparent_md.datapath.bpf_syscall import prog_test_run
from transparent_md.datapath.port_limits import PortLimits

pytestmark = pytest.mark.netns

LOOPBACK = socket.if_nametoindex("lo")
TC_ACT_SHOT, TC_ACT_REDIRECT = 2, 7


@pytest.fixture()
def pinned():
    cfg = layout.Config(md_ifindex=4242, shadow_slots=100, port_mac_quota=1,
                        slot_reuse_delay_ns=15 * 10**9, flags=layout.CFG_MAC_LOCK)
    cfg.shadow_net, cfg.shadow_mask = layout.be32("100.64.0.0"), layout.be32("255.192.0.0")
    with pinned_programs(cfg) as (loaded, maps, pin_dir):
        maps[layout.MAP_PORTS].update(ctypes.c_uint32(LOOPBACK), layout.Port(b"br0", b"tap7"))
        PortLimits(maps[layout.MAP_PORT_USAGE], maps[layout.MAP_PORT_RELEASED],
                   maps[layout.MAP_MAC_LOCKS], maps[layout.MAP_BY_GUEST]).reset(LOOPBACK)
        yield loaded, pin_dir


def syn(mac: str) -> bytes:
    return bytes(Ether(src=mac, dst="02:00:00:00:00:01") /
                 IP(src="10.0.0.5", dst="169.254.169.254") / TCP(dport=80, flags="S"))


def test_locks_are_listed_and_released_early(pinned):
    loaded, pin_dir = pinned
    assert prog_test_run(loaded.port_fd, syn("02:00:00:00:00:0a"))[0] == TC_ACT_REDIRECT
    assert locks.list_locks(pin_dir) == [
        locks.MacLock("02:00:00:00:00:0a", LOOPBACK, "tap7", "br0")]
    # The port holds its quota of one lock: a second MAC is refused...
    assert prog_test_run(loaded.port_fd, syn("02:00:00:00:00:0b"))[0] == TC_ACT_SHOT
    assert locks.release_mac(pin_dir, "02:00:00:00:00:0A") is True
    assert locks.list_locks(pin_dir) == []
    assert locks.release_mac(pin_dir, "02:00:00:00:00:0a") is False
    # ...and taken once the operator released the first one.
    assert prog_test_run(loaded.port_fd, syn("02:00:00:00:00:0b"))[0] == TC_ACT_REDIRECT
    assert [lock.mac for lock in locks.list_locks(pin_dir)] == ["02:00:00:00:00:0b"]
