"""MAC locks across restarts, and who inherits a lock when its port goes.

The port program locks a MAC to the first port it gets a shadow slot from; a later
request with that MAC from any other port gets a flagged slot and is answered nothing.
This keeper, a thread of the daemon (never the serving loop), does three things:

* **Keeps the locks.** Once a second it looks whether the locks may have changed (new
  slots were handed out, a port went, a lock was handed over; every few seconds in any
  case, for `identity release` run from another process) and writes them, with their
  ports, to the lock file (transparent_md.datapath.lock_file). A clean stop writes them a
  last time before the filters are detached. At start, before the first port is
  attached, `restore` puts back every saved lock whose port is still the same link (same
  ifindex, same name) and one of our ports; the others are released at once and logged.
* **Notes conflicts.** A flagged slot is a port asking for a MAC locked to another port:
  the keeper logs it once per (MAC, port) with port, MAC and IP, counts it, and keeps the
  port in the MAC's waiting line while it keeps asking (and for `LOCK_WAIT_S` after its
  last request).
* **Hands a released lock on.** `identity release` leaves the lock held by nobody
  (layout.LOCK_RELEASED); after `RELEASE_QUIET_S`, when no responder can still answer a
  new connection of its former holder from its identity cache, it goes to the port in
  line, or is freed for the next SYN.
* **Hands a lock over.** When the holder's port goes, its lock goes straight to the
  port that has waited longest (first asked) and still exists, without ever being free:
  a neighbour retrying from elsewhere cannot take it in between. With nobody waiting the
  lock is released, as before. Only a port that has gone loses a lock this way, so two
  ports never read one record: the holder's slots resolve to nobody once its port is
  not ours (identity.shadow_map).

Why the line is ordered by who asked first, and what it bounds, is in
docs/hostile-guests.md (MAC lock).
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from transparent_md.datapath import layout, lock_file
from transparent_md.datapath.lock_file import LockState, PortLink, SavedLock, SavedWaiter
from transparent_md.datapath.tables import open_table
from transparent_md.periodic import Periodic

log = logging.getLogger(__name__)

# How often the keeper looks at the locks and the flagged slots.
KEEP_INTERVAL_S = 1.0
# Every this many rounds the locks are read even if nothing hinted at a change (an
# `identity release` from another process leaves no other trace).
FULL_READ_EVERY = 10
# A port stays in a MAC's waiting line this long after its last refused request.
# cloud-init retries its datasources for about two minutes; an owner that gave up
# still inherits the lock if its neighbour's port goes within this time.
LOCK_WAIT_S = 300.0
# A released lock stays held by nobody this long after the keeper first sees it: longer
# than the responder's identity cache, as the slot reuse delay is, plus room for a slow
# worker.
RELEASE_QUIET_S = layout.IDENTITY_CACHE_TTL_S + 5.0
# At most this many waiting (MAC, port) pairs are remembered (each needs a flagged
# slot, so a port's identity quota already bounds what one guest adds).
MAX_WAITERS = 65536
# New conflicts logged per round, one line each; the rest are summed in one line.
CONFLICT_LINES_PER_ROUND = 10



def release_quiet_s() -> tuple[float, float]:
    """How long a released lock is held by nobody: (at least, at most)."""
    return RELEASE_QUIET_S, RELEASE_QUIET_S + FULL_READ_EVERY * KEEP_INTERVAL_S


_NS_PER_S = 1_000_000_000
_SLOT_SIZE = ctypes.sizeof(layout.Slot)
_SLOT_WORDS = _SLOT_SIZE // ctypes.sizeof(ctypes.c_uint32)
_FLAGS_WORD = layout.Slot.flags.offset // ctypes.sizeof(ctypes.c_uint32)


@dataclass
class _Waiter:
    port: str
    ip: str
    first_asked: float    # wall clock, for the file and the log
    last_asked_ns: int    # CLOCK_MONOTONIC, as the slot's last_seen_ns
    last_asked: float     # the same moment on the wall clock, for the file

    def asked(self, seen_ns: int) -> None:
        if seen_ns > self.last_asked_ns:
            self.last_asked = time.time() - (time.monotonic_ns() - seen_ns) / _NS_PER_S
            self.last_asked_ns = seen_ns


@dataclass
class KeeperStats:
    conflicts: int = 0         # (MAC, port) pairs that asked while locked elsewhere
    handovers: int = 0         # locks handed to a waiting port when the holder went
    restored: int = 0          # locks put back at start
    released_at_start: int = 0  # saved locks whose port was gone or not the same link


class LockKeeper:
    def __init__(self, pin_dir: str | Path, path: Path, *, wait_s: float = LOCK_WAIT_S,
                 quiet_s: float = RELEASE_QUIET_S,
                 interval_s: float = KEEP_INTERVAL_S) -> None:
        pin_dir = Path(pin_dir)
        self.path = path
        self.stats = KeeperStats()
        self._wait_ns = int(wait_s * _NS_PER_S)
        self._quiet_ns = int(quiet_s * _NS_PER_S)
        self._released_since: dict[str, int] = {}  # MAC -> when first seen released
        self._locks = open_table(pin_dir, layout.MAP_MAC_LOCKS)
        self._ports = open_table(pin_dir, layout.MAP_PORTS)
        self._events = open_table(pin_dir, layout.MAP_EVENTS)
        self._config = open_table(pin_dir, layout.MAP_CONFIG)
        self._slots = open_table(pin_dir, layout.MAP_SLOTS)
        self._mapping = self._slots.mapped(layout.Slot, layout.MAX_SLOTS)
        self._table = memoryview(self._mapping)
        self._flags = self._table.cast("I")[_FLAGS_WORD::_SLOT_WORDS]
        self._waiting: dict[tuple[str, int], _Waiter] = {}
        self._guard = threading.Lock()
        self._saved: LockState | None = None
        self._allocations = -1
        self._rounds = 0
        self._dirty = True
        self._closed = False
        self._started = False
        self._periodic = Periodic("lock-keeper", interval_s, lambda _: self.run_once(),
                                  logger=log)

    # -- start: put saved locks back ---------------------------------------------------
    def restore(self, ports: dict[int, str], leftover: Iterable[SavedLock] = ()) -> dict[int, int]:
        """Before the first port is attached: re-lock every saved MAC whose port is the
        same link now (`ports`: ifindex -> name of the ports about to be attached); a
        MAC whose port went while the daemon was down goes to the first of its saved
        waiting ports that is still here, as it would have with the daemon running.
        `leftover` are the locks read from an earlier run's pins (a `kill -9` leaves
        them, exact to the last packet); they win over the file. Returns how many locks
        each port holds now."""
        saved = lock_file.load(self.path)
        by_mac = {lock.mac: lock for lock in saved.locks}
        by_mac.update({lock.mac: lock for lock in leftover})
        now_ns, now = time.monotonic_ns(), time.time()
        held: dict[int, int] = {}
        with self._guard:
            for waiter in saved.waiting:
                asked_ago_ns = int(max(0.0, now - waiter.last_asked) * _NS_PER_S)
                if asked_ago_ns <= self._wait_ns and not _not_the_same_port(waiter.port, ports):
                    self._waiting[(waiter.mac, waiter.port.ifindex)] = _Waiter(
                        waiter.port.name, waiter.ip, waiter.first_asked,
                        now_ns - asked_ago_ns, waiter.last_asked)
            for mac, lock in sorted(by_mac.items()):
                owner = lock.port.ifindex
                why = _not_the_same_port(lock.port, ports)
                if why:
                    self.stats.released_at_start += 1
                    log.info("MAC lock of %s: its port %s (ifindex %d) %s", mac,
                             lock.port.name or "?", lock.port.ifindex, why)
                    owner = self._next_in_line(mac, lock.port.ifindex, ports.get)
                    if owner is None:
                        continue
                self._waiting.pop((mac, owner), None)
                self._locks.update(layout.mac_key(mac), ctypes.c_uint32(owner))
                held[owner] = held.get(owner, 0) + 1
                self.stats.restored += 1
            for key in [k for k in self._waiting if k[0] not in by_mac]:
                del self._waiting[key]  # waiting for a lock nobody holds any more
        if self.stats.restored or self.stats.released_at_start:
            log.info("MAC locks from the last run: %d restored, %d ports gone or not the "
                     "same link", self.stats.restored, self.stats.released_at_start)
        return held

    # -- the thread -----------------------------------------------------------------
    def start(self) -> None:
        self._started = True
        self._periodic.start()

    def close(self) -> None:
        """A clean stop: write the locks a last time, then hand over nothing more (the
        daemon is detaching its ports, they are not going away). A start that failed
        before the keeper started leaves the file as it was."""
        self._periodic.stop()
        with self._guard:
            if self._started and not self._closed:
                with contextlib.suppress(OSError):
                    self._save_if_changed(force=True)
            self._closed = True
        self._flags.release()
        self._table.release()
        with contextlib.suppress(BufferError):
            self._mapping.close()
        for handle in (self._locks, self._ports, self._events, self._config, self._slots):
            handle.close()

    def run_once(self) -> None:
        """One round: note conflicts, forget stale waiters, save the locks if changed."""
        with self._guard:
            if self._closed:
                return
            allocations = sum(self._events.lookup_percpu_u64(layout.Event.SLOT_ALLOCATED))
            self._rounds += 1
            changed = allocations != self._allocations
            self._allocations = allocations
            if changed or self._waiting:
                self._note_conflicts()
            full = self._rounds % FULL_READ_EVERY == 0
            if changed or full or self._dirty or self._released_since:
                self._save_if_changed()

    # -- the port program's bookkeeping ---------------------------------------------------
    def heir(self, mac: str, gone: int) -> int | None:
        """The port that inherits `mac`'s lock now that port `gone` goes, or None.
        Called with the lock still held by `gone`; the caller moves it."""
        with self._guard:
            if self._closed:
                return None
            self._note_conflicts()
            return self._next_in_line(mac, gone, self._port_name)

    def port_gone(self, ifindex: int) -> None:
        """A port went: it waits for nothing any more."""
        with self._guard:
            for key in [k for k in self._waiting if k[1] == ifindex]:
                del self._waiting[key]
            self._dirty = True

    def waiting(self) -> list[SavedWaiter]:
        with self._guard:
            return self._waiters()

    # -- inside the guard ---------------------------------------------------------------
    def _next_in_line(self, mac: str, gone: int,
                      port_name: Callable[[int], str | None]) -> int | None:
        """Take the waiter that asked first and whose port is still the same link out of
        `mac`'s line; None when nobody waits."""
        line = sorted((w.first_asked, ifindex) for (m, ifindex), w in self._waiting.items()
                      if m == mac and ifindex != gone)
        for _, ifindex in line:
            waiter = self._waiting.pop((mac, ifindex))
            if port_name(ifindex) != waiter.port:
                continue  # that port went too, or its ifindex names another link now
            self.stats.handovers += 1
            self._dirty = True
            before = ("the operator released it" if gone == layout.LOCK_RELEASED
                      else f"its port (ifindex {gone}) went")
            log.warning("MAC lock of %s handed over: %s; it goes to port %s (IP %s), which "
                        "has asked for it since %s while it was held", mac, before,
                        waiter.port, waiter.ip,
                        time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(waiter.first_asked)))
            return ifindex
        return None

    def _note_conflicts(self) -> None:
        now_ns = time.monotonic_ns()
        new: list[tuple[str, str, str, str]] = []
        for index in self._flagged_slots():
            slot = layout.Slot.from_buffer_copy(self._table[index * _SLOT_SIZE:
                                                            (index + 1) * _SLOT_SIZE])
            if not slot.ifindex or not slot.flags & layout.SLOT_LOCKED_ELSEWHERE:
                continue
            mac = layout.mac_str(slot.mac)
            holder = ctypes.c_uint32()
            if not self._locks.lookup(layout.mac_key(mac), holder) or \
                    holder.value == slot.ifindex:
                continue  # released meanwhile, or this port holds it now
            port = self._port_name(slot.ifindex)
            if port is None:
                continue
            key = (mac, slot.ifindex)
            waiter = self._waiting.get(key)
            if waiter is None or waiter.port != port:
                if len(self._waiting) >= MAX_WAITERS:
                    continue
                ip = layout.slot_ip(slot)
                waiter = self._waiting[key] = _Waiter(port, ip, time.time(), 0, 0.0)
                self.stats.conflicts += 1
                self._dirty = True
                new.append((mac, port, ip, self._port_name(holder.value) or
                            ("nobody (released)" if holder.value == layout.LOCK_RELEASED
                             else "?")))
            waiter.asked(slot.last_seen_ns)
        for key, waiter in list(self._waiting.items()):
            if now_ns - waiter.last_asked_ns > self._wait_ns:
                del self._waiting[key]
                self._dirty = True
        for mac, port, ip, holder in new[:CONFLICT_LINES_PER_ROUND]:
            log.warning("MAC lock conflict: port %s MAC %s IP %s asked for a MAC locked to "
                        "port %s: answered nothing; in line for the lock", port, mac, ip,
                        holder)
        if len(new) > CONFLICT_LINES_PER_ROUND:
            log.warning("MAC lock conflicts: %d more this second",
                        len(new) - CONFLICT_LINES_PER_ROUND)

    def _hand_on(self, key: layout.MacKey, mac: str) -> int:
        """A released lock's quiet time is over: to the port the operator named (if it is
        still the same link), else to the port in line, else freed."""
        self._note_conflicts()
        named = lock_file.take_heir(self.path, mac)
        if named is not None and self._port_name(named.ifindex) == named.name:
            self._waiting.pop((mac, named.ifindex), None)
            self._locks.update(key, ctypes.c_uint32(named.ifindex))
            self.stats.handovers += 1
            self._dirty = True
            log.warning("MAC lock of %s handed over: the operator released it to port %s",
                        mac, named.name)
            return named.ifindex
        if named is not None:
            log.warning("MAC lock of %s: port %s, named by the operator, is gone: the lock "
                        "goes to the port in line, if any", mac, named.name)
        heir = self._next_in_line(mac, layout.LOCK_RELEASED, self._port_name)
        if heir is None:
            self._locks.delete(key)
            log.info("MAC lock of %s released by the operator: free for the next port "
                     "that asks", mac)
            return layout.LOCK_RELEASED
        self._locks.update(key, ctypes.c_uint32(heir))
        return heir

    def _flagged_slots(self) -> list[int]:
        cfg = layout.Config()
        if not self._config.lookup(ctypes.c_uint32(0), cfg) or cfg.shadow_slots == 0:
            return []
        count = min(cfg.shadow_slots + 1, layout.MAX_SLOTS)
        # compress() walks the flag words in C: no Python loop over every slot.
        return [i for i in itertools.compress(range(count), self._flags[:count]) if i]

    def _port_name(self, ifindex: int) -> str | None:
        port = layout.Port()
        if not self._ports.lookup(ctypes.c_uint32(ifindex), port):
            return None
        return port.name.decode()

    def _waiters(self) -> list[SavedWaiter]:
        return sorted((SavedWaiter(mac, PortLink(ifindex, w.port), w.ip, w.first_asked,
                                   w.last_asked)
                       for (mac, ifindex), w in self._waiting.items()),
                      key=lambda w: (w.mac, w.first_asked))

    def _save_if_changed(self, force: bool = False) -> None:
        locks = []
        released = {}
        for key, ifindex in self._locks.items(layout.MacKey, ctypes.c_uint32):
            mac = layout.mac_str(key.mac)
            if ifindex.value == layout.LOCK_RELEASED and not self._closed:
                released[mac] = self._released_since.get(mac, time.monotonic_ns())
                if time.monotonic_ns() - released[mac] >= self._quiet_ns:
                    del released[mac]
                    ifindex.value = self._hand_on(key, mac)
                    if ifindex.value == layout.LOCK_RELEASED:
                        continue
            locks.append(SavedLock(mac, PortLink(ifindex.value,
                                                 self._port_name(ifindex.value) or "")))
        self._released_since = released
        state = LockState(tuple(sorted(locks, key=lambda lock: lock.mac)),
                          tuple(self._waiters()))
        self._dirty = False
        if state == self._saved and not force:
            return
        try:
            lock_file.save(self.path, state)
        except OSError as exc:
            self._dirty = True
            log.error("cannot write the MAC lock file %s: %s (retrying)", self.path, exc)
            return
        self._saved = state


def _not_the_same_port(link: PortLink, ports: dict[int, str]) -> str:
    """Why a saved port is not the link it was (empty when it is)."""
    name = ports.get(link.ifindex)
    if name is None:
        return "is gone or no longer one of our ports"
    if name != link.name:
        return f"is gone: ifindex {link.ifindex} is {name} now"
    return ""
