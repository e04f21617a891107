"""Who is behind a shadow address: read the datapath's slot and port tables.

The responder sees every request coming from `<shadow prefix> | slot`; the port program
(or the raw datapath) wrote that slot (port ifindex, guest IP, guest MAC) before it let
the SYN through, and the daemon wrote the port's bridge and name when it attached. The
tables are pinned BPF maps or the raw datapath's shared files (datapath.tables): this
module reads both the same way. No bcc here.

Answers are cached per slot for `cache_ttl_s`. That is safe because a released slot is
handed to another identity only after the slot reuse delay
(transparent_md.datapath.slot_release.DEFAULT_SLOT_REUSE_DELAY_S), which is longer
than this cache: a cached answer always expires before its slot can change hands.

With MAC locks on, a slot is its MAC's only voice while its port holds the MAC's lock
(tmd_mac_locks); any other slot with that MAC (a guest copying a neighbour's MAC, or the
former holder after `identity release`) resolves to a Guest with
`locked_elsewhere=True`, and the responder answers it nothing of anyone's. Such answers
are not cached: a port handed the lock (transparent_md.datapath.lock_keeper) is served
from its next connection on. A holder's answer is cached like any other, so a lock
released by the operator stops serving its former holder within the cache's lifetime.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import socket
import time
from pathlib import Path

from transparent_md.datapath import layout
from transparent_md.datapath.tables import open_table
from transparent_md.identity.guest import Guest

# Below the slot reuse delay (see above) yet long enough that a booting guest's burst
# of connections costs one pair of map reads; the datapath declares it, as it keeps
# the reuse delay above it.
DEFAULT_CACHE_TTL_S = layout.IDENTITY_CACHE_TTL_S


class ShadowResolver:
    """Callable: shadow peer address (str) -> Guest, or None if unknown."""

    def __init__(self, pin_dir: str | Path, shadow_prefix: str,
                 cache_ttl_s: float = DEFAULT_CACHE_TTL_S) -> None:
        pin_dir = Path(pin_dir)
        self.slots = open_table(pin_dir, layout.MAP_SLOTS)
        self.ports = open_table(pin_dir, layout.MAP_PORTS)
        self.locks = open_table(pin_dir, layout.MAP_MAC_LOCKS)
        config = layout.Config()
        with contextlib.closing(open_table(pin_dir, layout.MAP_CONFIG)) as cfg:
            self._mac_lock = (cfg.lookup(ctypes.c_uint32(0), config)
                              and bool(config.flags & layout.CFG_MAC_LOCK))
        net = ipaddress.IPv4Network(shadow_prefix)
        self._net = int(net.network_address)
        self._mask = int(net.netmask)
        self._ttl = cache_ttl_s
        self._cache: dict[int, tuple[Guest, float]] = {}
        # Reused buffers: one lookup at a time per resolver (the responder is one thread).
        self._slot_key = ctypes.c_uint32()
        self._slot = layout.Slot()
        self._port_key = ctypes.c_uint32()
        self._port = layout.Port()
        self._mac_key = layout.MacKey()
        self._holder = ctypes.c_uint32()

    def __call__(self, peer_ip: str) -> Guest | None:
        try:
            addr = int.from_bytes(socket.inet_aton(peer_ip), "big")
        except OSError:
            return None
        if addr & self._mask != self._net:
            return None
        slot = addr & ~self._mask & 0xFFFFFFFF
        now = time.monotonic()
        cached = self._cache.get(slot)
        if cached is not None and cached[1] > now:
            return cached[0]
        guest = self._read(slot)
        if guest is None or guest.locked_elsewhere:
            self._cache.pop(slot, None)
        else:
            self._cache[slot] = (guest, now + self._ttl)
        return guest

    def _read(self, slot_index: int) -> Guest | None:
        self._slot_key.value = slot_index
        if not self.slots.lookup(self._slot_key, self._slot) or self._slot.ifindex == 0:
            return None
        slot = self._slot
        self._port_key.value = slot.ifindex
        if not self.ports.lookup(self._port_key, self._port):
            return None  # port no longer ours: answer nothing
        return Guest(
            bridge=self._port.bridge.decode(),
            port=self._port.name.decode(),
            ifindex=slot.ifindex,
            mac=layout.mac_str(slot.mac),
            ip=layout.slot_ip(slot),
            locked_elsewhere=self._locked_elsewhere(slot),
        )

    def _locked_elsewhere(self, slot: layout.Slot) -> bool:
        """True unless MAC locks are off or this slot's port holds its MAC's lock now."""
        if not self._mac_lock:
            return bool(slot.flags & layout.SLOT_LOCKED_ELSEWHERE)
        self._mac_key.mac[:] = bytes(slot.mac)
        return not (self.locks.lookup(self._mac_key, self._holder)
                    and self._holder.value == slot.ifindex)

    def close(self) -> None:
        self.slots.close()
        self.ports.close()
        self.locks.close()
