"""Who gets a shadow slot on the raw datapath: the port program's rules, in Python.

The same tables as the tc datapath (transparent_md.datapath.tables, the structs of
layout), the same rules as bpf/port_ingress.c: only a SYN may take a slot; a port holds
at most its quota of identities and of locked MACs; its SYNs pass a token bucket (a
GCRA); a MAC is locked to the first port it got a slot from, and from another port it
gets a flagged slot the responder refuses by name. A released slot goes to another
identity only after the reuse delay. The slot releaser, the per-port limits and the
responder's identity read and write these tables exactly as they do the BPF maps.

One thread (the pump) admits; the slot releaser frees slots from another: a slot is
claimed while holding the slot table for writing, so a release and a claim never meet
half-way.
"""

from __future__ import annotations

import ctypes
import time

from transparent_md.datapath import layout
from transparent_md.datapath.layout import Drop, Event
from transparent_md.datapath.tables import SharedTable

# Free slots looked at per new identity before giving up, as the port program does.
SLOT_CANDIDATES = 8
# A slot's last-seen is refreshed at most this often (the releaser's grace is longer).
LAST_SEEN_REFRESH_NS = 1_000_000_000


class Admission:
    """`admit()` a request's identity: its slot number, or the Drop that refuses it."""

    def __init__(self, tables: dict[str, SharedTable]) -> None:
        self.t = tables
        self.config = layout.Config()
        self.reload_config()
        self._key = layout.GuestKey()
        self._slot = layout.Slot()
        self._slot_index = ctypes.c_uint32()
        self._value = ctypes.c_uint32()
        self._port = ctypes.c_uint32()
        self._usage = layout.PortUsage()
        self._released = layout.PortReleased()
        self._zero = ctypes.c_uint32(0)

    def reload_config(self) -> None:
        self.t[layout.MAP_CONFIG].lookup(ctypes.c_uint32(0), self.config)

    def count(self, what: Event | Drop) -> None:
        table = layout.MAP_EVENTS if isinstance(what, Event) else layout.MAP_DROPS
        self.t[table].add_u64(int(what))

    # -- the decision -------------------------------------------------------------------
    def admit(self, ifindex: int, guest_ip: bytes, guest_mac: bytes, gw_mac: bytes,
              opens: bool) -> int | Drop:
        now = time.monotonic_ns()
        key = self._key
        key.ifindex = ifindex
        key.ip = int.from_bytes(guest_ip, "little")
        key.mac[:] = guest_mac
        self._port.value = ifindex
        usage = None
        if opens:
            usage = self._port_usage()
            if not self._syn_allowed(usage, now):
                return Drop.SYN_RATE
        slot = self._known_slot(gw_mac, now)
        if slot:
            if usage is not None:
                self._lock_if_free(usage)
            return slot
        if usage is None:
            return Drop.NOT_SYN
        return self._new_slot(gw_mac, usage, now)

    def _port_usage(self) -> layout.PortUsage:
        usage = self._usage
        if not self.t[layout.MAP_PORT_USAGE].lookup(self._port, usage):
            ctypes.memset(ctypes.addressof(usage), 0, ctypes.sizeof(usage))
        return usage

    def _save_usage(self, usage: layout.PortUsage) -> None:
        self.t[layout.MAP_PORT_USAGE].update(self._port, usage)

    def _syn_allowed(self, usage: layout.PortUsage, now: int) -> bool:
        cost = self.config.syn_cost_ns
        if cost == 0:
            return True
        tat = max(usage.syn_tat_ns, now)
        if tat + cost - now > self.config.syn_burst_ns:
            return False
        usage.syn_tat_ns = tat + cost
        self._save_usage(usage)
        return True

    def _known_slot(self, gw_mac: bytes, now: int) -> int:
        if not self.t[layout.MAP_BY_GUEST].lookup(self._key, self._value):
            return 0
        index = self._value.value
        self._slot_index.value = index
        entry = self._slot
        key = self._key
        if (not self.t[layout.MAP_SLOTS].lookup(self._slot_index, entry)
                or entry.ifindex != key.ifindex or entry.ip != key.ip
                or bytes(entry.mac) != bytes(key.mac)):
            return 0
        if bytes(entry.gw_mac) != gw_mac or now - entry.last_seen_ns > LAST_SEEN_REFRESH_NS:
            slots = self.t[layout.MAP_SLOTS]
            with slots.writing():
                # Re-read under the lock: the releaser may have freed it meanwhile.
                if not slots.lookup(self._slot_index, entry) or entry.ifindex != key.ifindex:
                    return 0
                entry.gw_mac[:] = gw_mac
                entry.last_seen_ns = now
                slots.update(self._slot_index, entry)
        return index

    def _lock_if_free(self, usage: layout.PortUsage) -> None:
        """A SYN of an identity with a slot takes its MAC's lock if nobody holds it (the
        responder serves a slot only while its port holds the MAC's lock)."""
        if not self.config.flags & layout.CFG_MAC_LOCK:
            return
        mac_key = layout.MacKey()
        mac_key.mac[:] = bytes(self._key.mac)
        locks = self.t[layout.MAP_MAC_LOCKS]
        if locks.lookup(mac_key, ctypes.c_uint32()):
            return
        released = self._released
        if not self.t[layout.MAP_PORT_RELEASED].lookup(self._port, released):
            ctypes.memset(ctypes.addressof(released), 0, ctypes.sizeof(released))
        if self.config.port_mac_quota and self._in_use(
                usage.macs_locked, released.macs_unlocked) >= self.config.port_mac_quota:
            return
        if locks.insert(mac_key, ctypes.c_uint32(self._port.value)):
            usage.macs_locked += 1
            self._save_usage(usage)

    def _in_use(self, taken: int, released: int) -> int:
        return taken - released if taken > released else 0

    def _new_slot(self, gw_mac: bytes, usage: layout.PortUsage, now: int) -> int | Drop:
        cfg = self.config
        released = self._released
        if not self.t[layout.MAP_PORT_RELEASED].lookup(self._port, released):
            ctypes.memset(ctypes.addressof(released), 0, ctypes.sizeof(released))
        if cfg.port_identity_quota and self._in_use(
                usage.identities_taken, released.identities_released) >= cfg.port_identity_quota:
            return Drop.PORT_QUOTA
        mac_key = layout.MacKey()
        mac_key.mac[:] = bytes(self._key.mac)
        flags, lock_it = 0, False
        if cfg.flags & layout.CFG_MAC_LOCK:
            locked_to = ctypes.c_uint32()
            if self.t[layout.MAP_MAC_LOCKS].lookup(mac_key, locked_to):
                if locked_to.value != self._port.value:
                    flags = layout.SLOT_LOCKED_ELSEWHERE
            else:
                if cfg.port_mac_quota and self._in_use(
                        usage.macs_locked, released.macs_unlocked) >= cfg.port_mac_quota:
                    return Drop.MAC_QUOTA
                lock_it = True
        chosen = self._claim(now)
        if not chosen:
            return Drop.NO_SLOT
        fresh = layout.Slot(ifindex=self._port.value, ip=self._key.ip, flags=flags,
                            last_seen_ns=now, free_since_ns=layout.SLOT_TAKEN)
        fresh.mac[:] = bytes(self._key.mac)
        fresh.gw_mac[:] = gw_mac
        self.t[layout.MAP_SLOTS].update(ctypes.c_uint32(chosen), fresh)
        self.t[layout.MAP_BY_GUEST].update(self._key, ctypes.c_uint32(chosen))
        usage.identities_taken += 1
        if lock_it and self.t[layout.MAP_MAC_LOCKS].insert(mac_key, ctypes.c_uint32(
                self._port.value)):
            usage.macs_locked += 1
        self._save_usage(usage)
        self.count(Event.SLOT_ALLOCATED)
        if flags & layout.SLOT_LOCKED_ELSEWHERE:
            self.count(Event.FORGED_FLAGGED)
        return chosen

    def _claim(self, now: int) -> int:
        """A free slot, marked taken; 0 when none of the candidates is free."""
        cfg = self.config
        if cfg.shadow_slots == 0:
            return 0
        slots, ticket = self.t[layout.MAP_SLOTS], self.t[layout.MAP_NEXT_SLOT]
        counter = ctypes.c_uint64()
        index = ctypes.c_uint32()
        entry = layout.Slot()
        with slots.writing():
            ticket.lookup(self._zero, counter)
            for _ in range(SLOT_CANDIDATES):
                number = counter.value
                counter.value += 1
                index.value = number % cfg.shadow_slots + 1
                if not slots.lookup(index, entry):
                    continue
                free_since = entry.free_since_ns
                if free_since == layout.SLOT_TAKEN or (
                        free_since and now - free_since < cfg.slot_reuse_delay_ns):
                    continue
                entry.free_since_ns = layout.SLOT_TAKEN
                slots.update(index, entry)
                ticket.update(self._zero, counter)
                return index.value
            ticket.update(self._zero, counter)
        return 0

    # -- the reply side -----------------------------------------------------------------
    def slot_of(self, shadow_ip: bytes) -> layout.Slot | None:
        """The taken slot a reply's shadow destination stands for, or None."""
        address = int.from_bytes(shadow_ip, "big")
        net = int.from_bytes(self.config.shadow_net.to_bytes(4, "little"), "big")
        mask = int.from_bytes(self.config.shadow_mask.to_bytes(4, "little"), "big")
        if address & mask != net:
            return None
        index = address & ~mask & 0xFFFFFFFF
        if index == 0 or index > self.config.shadow_slots:
            return None
        self._slot_index.value = index
        entry = layout.Slot()
        if not self.t[layout.MAP_SLOTS].lookup(self._slot_index, entry) or entry.ifindex == 0:
            return None
        return entry
