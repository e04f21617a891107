"""Per-port bookkeeping of the hostile-guest limits: identity and MAC-lock counts.

The port program counts what a port takes (identities, MAC locks) with atomic adds in
tmd_port_usage; user space counts what it gives back in tmd_port_released. "In use" is
the difference, so neither side ever read-modify-writes a word the other one writes.
User space writes a port's usage entry only when it (re)attaches the port.
"""

from __future__ import annotations

import ctypes
import logging
from typing import TYPE_CHECKING

from transparent_md.datapath import layout
from transparent_md.datapath.bpf_syscall import BpfMap

if TYPE_CHECKING:
    from transparent_md.datapath.lock_keeper import LockKeeper

log = logging.getLogger(__name__)


class PortLimits:
    """Reset a port's counters when it is attached; release or hand over its MAC locks
    when it goes."""

    def __init__(self, usage: BpfMap, released: BpfMap, mac_locks: BpfMap,
                 by_guest: BpfMap, keeper: LockKeeper | None = None) -> None:
        self.usage = usage
        self.released = released
        self.mac_locks = mac_locks
        self.by_guest = by_guest
        self.keeper = keeper
        # Locks per port put back at start (LockKeeper.restore), while the first sync
        # attaches every port: counting them per port would walk the lock map each time.
        self.restored_locks: dict[int, int] | None = None

    def reset(self, ifindex: int) -> None:
        """A port (re)attached: a fresh SYN bucket, and its identity and MAC-lock counts
        set to what it still holds. The locks stay: a lock belongs to the link, which
        is the same link as long as its ifindex lives (a restart puts back only the
        locks of links that are still the same)."""
        held = sum(1 for key in self.by_guest.keys(layout.GuestKey) if key.ifindex == ifindex)
        if self.restored_locks is not None:
            locks = self.restored_locks.get(ifindex, 0)
        else:
            locks = sum(1 for _, port in self.mac_locks.items(layout.MacKey, ctypes.c_uint32)
                        if port.value == ifindex)
        self.released.update(ctypes.c_uint32(ifindex), layout.PortReleased())
        self.usage.update(ctypes.c_uint32(ifindex),
                          layout.PortUsage(identities_taken=held, macs_locked=locks))

    def forget(self, ifindex: int) -> None:
        """The port is gone: its locks go to the ports waiting for them, or are released
        (its MACs may then ask from another port)."""
        self.remove_locks(ifindex)
        if self.keeper is not None:
            self.keeper.port_gone(ifindex)
        self.usage.delete(ctypes.c_uint32(ifindex))
        self.released.delete(ctypes.c_uint32(ifindex))

    def remove_locks(self, ifindex: int) -> int:
        """Take every MAC lock away from this port: each goes straight to the port next
        in its line (never free in between), or is deleted. How many there were."""
        removed = handed = 0
        for key, port in self.mac_locks.items(layout.MacKey, ctypes.c_uint32):
            if port.value != ifindex:
                continue
            heir = self.keeper.heir(layout.mac_str(key.mac), ifindex) if self.keeper else None
            if heir is not None:
                self.mac_locks.update(key, ctypes.c_uint32(heir))
                handed += 1
            elif self.mac_locks.delete(key):
                removed += 1
        if removed or handed:
            log.info("port ifindex %d went: %d MAC lock(s) released, %d handed over",
                     ifindex, removed, handed)
        return removed + handed

    def release_unattached(self, attached: set[int]) -> None:
        """Take the locks of ports that are not attached away (as if they just went)."""
        holders = {port.value for _, port in self.mac_locks.items(layout.MacKey, ctypes.c_uint32)}
        for ifindex in holders - attached - {layout.LOCK_RELEASED}:
            self.remove_locks(ifindex)

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
