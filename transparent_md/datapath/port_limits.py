"""Per-port bookkeeping of the hostile-guest limits: identity and MAC-lock counts.

The port program counts what a port takes (identities, MAC locks) with atomic adds in
tmd_port_usage; user space counts what it gives back in tmd_port_released. "In use" is
the difference, so neither side ever read-modify-writes a word the other one writes.
User space writes a port's usage entry only when it (re)attaches the port.
"""

from __future__ import annotations

import ctypes
import logging

from transparent_md.datapath import layout
from transparent_md.datapath.bpf_syscall import BpfMap

log = logging.getLogger(__name__)


class PortLimits:
    """Reset a port's counters and locks when it is attached, drop them when it goes."""

    def __init__(self, usage: BpfMap, released: BpfMap, mac_locks: BpfMap,
                 by_guest: BpfMap) -> None:
        self.usage = usage
        self.released = released
        self.mac_locks = mac_locks
        self.by_guest = by_guest

    def reset(self, ifindex: int) -> None:
        """A port (re)attached: a fresh SYN bucket, no MAC locks, and its identity count
        set to the slots it still holds (a port that left and came back keeps them)."""
        self.remove_locks(ifindex)
        held = sum(1 for key in self.by_guest.keys(layout.GuestKey) if key.ifindex == ifindex)
        self.released.update(ctypes.c_uint32(ifindex), layout.PortReleased())
        self.usage.update(ctypes.c_uint32(ifindex), layout.PortUsage(identities_taken=held))

    def forget(self, ifindex: int) -> None:
        """The port is gone: its MACs may ask from another port now."""
        self.remove_locks(ifindex)
        self.usage.delete(ctypes.c_uint32(ifindex))
        self.released.delete(ctypes.c_uint32(ifindex))

    def remove_locks(self, ifindex: int) -> int:
        """Delete every MAC lock held by this port; how many there were."""
        removed = 0
        for key, port in self.mac_locks.items(layout.MacKey, ctypes.c_uint32):
            if port.value == ifindex and self.mac_locks.delete(key):
                removed += 1
        if removed:
            log.info("released %d MAC lock(s) of port ifindex %d", removed, ifindex)
        return removed

    def count_release(self, ifindex: int, identities: int = 0, macs: int = 0) -> None:
        """Add to a port's released counters (only if the port is still attached)."""
        add_released(self.released, ifindex, identities, macs)


def add_released(released: BpfMap, ifindex: int, identities: int = 0, macs: int = 0) -> None:
    """User space is the only writer of tmd_port_released, so this plain read-modify-write
    races with nothing in BPF. Two user-space writers (the slot releaser and an operator's
    release_mac) could meet on one port's entry; at worst one release goes uncounted and
    the port's quota is one tighter until it is re-attached. A port without an entry is
    not attached: nothing to count."""
    key = ctypes.c_uint32(ifindex)
    entry = layout.PortReleased()
    if not released.lookup(key, entry):
        return
    entry.identities_released += identities
    entry.macs_unlocked += macs
    released.update(key, entry)
