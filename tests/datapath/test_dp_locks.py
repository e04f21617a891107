"""MAC locks: listed with their port, released early, counted, kept across restarts,
handed to the port waiting for them when their port goes.

The real port program takes the lock and flags the slot of a port asking for a MAC
locked elsewhere (BPF_PROG_TEST_RUN on a SYN); list_locks and release_mac work from the
pins alone, as the CLI does from another process; the LockKeeper and the resolver read
the same pins as in the daemon.
"""

from __future__ import annotations

import ctypes
import socket

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from tests.pinned_maps import pinned_programs
from transparent_md.datapath import layout, lock_file, locks
from transparent_md.datapath.bpf_syscall import prog_test_run
from transparent_md.datapath.lock_file import LockState, PortLink, SavedLock, SavedWaiter
from transparent_md.datapath.lock_keeper import FULL_READ_EVERY, LockKeeper
from transparent_md.datapath.port_limits import PortLimits
from transparent_md.identity.shadow_map import ShadowResolver

pytestmark = pytest.mark.netns

LOOPBACK = socket.if_nametoindex("lo")
# Another port of ours, as far as the maps know (the program runs on loopback only).
NEIGHBOUR = 4243
GONE = 4244
VICTIM_MAC = "02:00:00:00:00:77"
TC_ACT_SHOT, TC_ACT_REDIRECT = 2, 7


@pytest.fixture()
def pinned():
    cfg = layout.Config(md_ifindex=4242, shadow_slots=100, port_mac_quota=1,
                        slot_reuse_delay_ns=15 * 10**9, flags=layout.CFG_MAC_LOCK)
    cfg.shadow_net, cfg.shadow_mask = layout.be32("100.64.0.0"), layout.be32("255.192.0.0")
    with pinned_programs(cfg) as (loaded, maps, pin_dir):
        maps[layout.MAP_PORTS].update(ctypes.c_uint32(LOOPBACK), layout.Port(b"br0", b"tap7"))
        maps[layout.MAP_PORTS].update(ctypes.c_uint32(NEIGHBOUR), layout.Port(b"br0", b"tap8"))
        port_limits(maps).reset(LOOPBACK)
        yield loaded, pin_dir, maps


def port_limits(maps, keeper: LockKeeper | None = None) -> PortLimits:
    return PortLimits(maps[layout.MAP_PORT_USAGE], maps[layout.MAP_PORT_RELEASED],
                      maps[layout.MAP_MAC_LOCKS], maps[layout.MAP_BY_GUEST], keeper=keeper)


def holder(maps, mac: str) -> int | None:
    port = ctypes.c_uint32()
    return port.value if maps[layout.MAP_MAC_LOCKS].lookup(layout.mac_key(mac), port) else None


def syn(mac: str, src: str = "10.0.0.5") -> bytes:
    return bytes(Ether(src=mac, dst="02:00:00:00:00:01") /
                 IP(src=src, dst="169.254.169.254") / TCP(dport=80, flags="S"))


def test_locks_are_listed_and_released_early(pinned):
    loaded, pin_dir, _ = pinned
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


def test_saved_locks_come_back_only_for_the_same_link(pinned, tmp_path):
    """A saved lock is put back when its ifindex still names its port; a port that is
    gone or whose ifindex names another link now loses it, and the port that waited for
    it (and is still here) inherits it."""
    _, pin_dir, maps = pinned
    path = tmp_path / "mac-locks.json"
    asked = 1_700_000_000.0
    lock_file.save(path, LockState(
        locks=(SavedLock("02:00:00:00:00:01", PortLink(LOOPBACK, "tap7")),
               SavedLock("02:00:00:00:00:02", PortLink(NEIGHBOUR, "vnet0")),  # renamed link
               SavedLock(VICTIM_MAC, PortLink(GONE, "tap9"))),
        waiting=(SavedWaiter(VICTIM_MAC, PortLink(LOOPBACK, "tap7"), "10.0.0.5", asked,
                             asked + 1),)))
    keeper = LockKeeper(pin_dir, path, wait_s=10**10)
    try:
        held = keeper.restore({LOOPBACK: "tap7", NEIGHBOUR: "tap8"})
        assert held == {LOOPBACK: 2}
        assert holder(maps, "02:00:00:00:00:01") == LOOPBACK
        assert holder(maps, "02:00:00:00:00:02") is None
        assert holder(maps, VICTIM_MAC) == LOOPBACK
        assert (keeper.stats.restored, keeper.stats.released_at_start,
                keeper.stats.handovers) == (2, 2, 1)
        keeper.start()
        keeper.run_once()
        assert lock_file.load(path).locks == (
            SavedLock("02:00:00:00:00:01", PortLink(LOOPBACK, "tap7")),
            SavedLock(VICTIM_MAC, PortLink(LOOPBACK, "tap7")))
    finally:
        keeper.close()


def test_leftover_pins_win_over_the_file(pinned, tmp_path):
    """A `kill -9` leaves the pins: their locks are exact, the file may lag a second."""
    _, pin_dir, maps = pinned
    path = tmp_path / "mac-locks.json"
    lock_file.save(path, LockState(locks=(SavedLock(VICTIM_MAC, PortLink(NEIGHBOUR, "tap8")),)))
    maps[layout.MAP_MAC_LOCKS].update(layout.mac_key(VICTIM_MAC), ctypes.c_uint32(LOOPBACK))
    leftover = locks.leftover(pin_dir)
    assert leftover == [SavedLock(VICTIM_MAC, PortLink(LOOPBACK, "tap7"))]
    keeper = LockKeeper(pin_dir, path)
    try:
        keeper.restore({LOOPBACK: "tap7", NEIGHBOUR: "tap8"}, leftover)
        assert holder(maps, VICTIM_MAC) == LOOPBACK
    finally:
        keeper.close()


def test_a_gone_holders_lock_goes_to_the_port_that_asked_first(pinned, tmp_path):
    """The neighbour holds the victim's MAC; the victim's port asks (a conflict: flagged
    slot, answered nothing). When the neighbour's port goes, the lock moves straight to
    the victim's port and the victim's flagged slot is served from then on; the
    neighbour's other ports never see the lock free."""
    loaded, pin_dir, maps = pinned
    maps[layout.MAP_MAC_LOCKS].update(layout.mac_key(VICTIM_MAC), ctypes.c_uint32(NEIGHBOUR))
    path = tmp_path / "mac-locks.json"
    keeper = LockKeeper(pin_dir, path)
    resolve = ShadowResolver(pin_dir, "100.64.0.0/10")
    try:
        keeper.start()
        assert prog_test_run(loaded.port_fd, syn(VICTIM_MAC))[0] == TC_ACT_REDIRECT
        assert resolve("100.64.0.1").locked_elsewhere
        keeper.run_once()
        assert keeper.stats.conflicts == 1
        assert [(w.mac, w.port, w.ip) for w in keeper.waiting()] == [
            (VICTIM_MAC, PortLink(LOOPBACK, "tap7"), "10.0.0.5")]
        assert [w.port for w in lock_file.load(path).waiting] == [PortLink(LOOPBACK, "tap7")]
        # Noticed once: a second round (the victim retrying) adds no conflict.
        prog_test_run(loaded.port_fd, syn(VICTIM_MAC))
        keeper.run_once()
        assert keeper.stats.conflicts == 1

        maps[layout.MAP_PORTS].delete(ctypes.c_uint32(NEIGHBOUR))  # as the attacher does
        port_limits(maps, keeper).forget(NEIGHBOUR)
        assert holder(maps, VICTIM_MAC) == LOOPBACK
        assert keeper.stats.handovers == 1 and keeper.waiting() == []
        assert not resolve("100.64.0.1").locked_elsewhere  # not cached while refused
    finally:
        resolve.close()
        keeper.close()


def test_without_a_waiting_port_a_gone_holders_lock_is_released(pinned, tmp_path):
    _, pin_dir, maps = pinned
    maps[layout.MAP_MAC_LOCKS].update(layout.mac_key(VICTIM_MAC), ctypes.c_uint32(NEIGHBOUR))
    keeper = LockKeeper(pin_dir, tmp_path / "mac-locks.json")
    try:
        port_limits(maps, keeper).forget(NEIGHBOUR)
        assert holder(maps, VICTIM_MAC) is None
    finally:
        keeper.close()


def test_a_released_lock_is_quiet_then_goes_to_the_port_in_line(pinned, tmp_path):
    """`identity release`: the lock is held by nobody, so its former holder is refused
    (from the next uncached read) and no port can take it by asking; once the quiet time
    is over it goes to the port that waited in line."""
    loaded, pin_dir, maps = pinned
    maps[layout.MAP_MAC_LOCKS].update(layout.mac_key(VICTIM_MAC), ctypes.c_uint32(NEIGHBOUR))
    prog_test_run(loaded.port_fd, syn(VICTIM_MAC))  # the victim's port asks: in line
    keeper = LockKeeper(pin_dir, tmp_path / "mac-locks.json", quiet_s=3600)
    resolve = ShadowResolver(pin_dir, "100.64.0.0/10", cache_ttl_s=0)
    try:
        keeper.run_once()
        assert [w.port.ifindex for w in keeper.waiting()] == [LOOPBACK]
        assert locks.release_mac(pin_dir, VICTIM_MAC)
        assert locks.release_mac(pin_dir, VICTIM_MAC) is False  # released already
        assert holder(maps, VICTIM_MAC) == layout.LOCK_RELEASED
        assert locks.list_locks(pin_dir) == []
        prog_test_run(loaded.port_fd, syn(VICTIM_MAC))
        for _ in range(FULL_READ_EVERY):  # it notices within that many rounds
            keeper.run_once()  # quiet: nobody takes it, not even by asking
        assert holder(maps, VICTIM_MAC) == layout.LOCK_RELEASED
        assert resolve("100.64.0.1").locked_elsewhere
        keeper._quiet_ns = 0  # the quiet time is over
        keeper.run_once()
        assert holder(maps, VICTIM_MAC) == LOOPBACK
        assert not resolve("100.64.0.1").locked_elsewhere
    finally:
        resolve.close()
        keeper.close()


def test_a_released_lock_nobody_waits_for_is_freed_for_the_next_syn(pinned, tmp_path):
    """With nobody in line the lock is freed after the quiet time, and the next SYN of
    a slot with that MAC, even its former holder's, takes it."""
    loaded, pin_dir, maps = pinned
    prog_test_run(loaded.port_fd, syn(VICTIM_MAC))
    keeper = LockKeeper(pin_dir, tmp_path / "mac-locks.json", quiet_s=0)
    resolve = ShadowResolver(pin_dir, "100.64.0.0/10", cache_ttl_s=0)
    try:
        assert not resolve("100.64.0.1").locked_elsewhere
        assert locks.release_mac(pin_dir, VICTIM_MAC)
        assert resolve("100.64.0.1").locked_elsewhere
        for _ in range(FULL_READ_EVERY):
            keeper.run_once()
        assert holder(maps, VICTIM_MAC) is None
        prog_test_run(loaded.port_fd, syn(VICTIM_MAC))
        assert holder(maps, VICTIM_MAC) == LOOPBACK
        assert not resolve("100.64.0.1").locked_elsewhere
    finally:
        resolve.close()
        keeper.close()
