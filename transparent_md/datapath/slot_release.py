"""Give shadow slots back as soon as no late reply can reach another guest.

A slot may go to another identity only when nothing the responder still holds can send
to its shadow address. The responder namespace is the only place replies come from, so
the test is exact: no TCP socket there, in any state (a SYN_RECV request sock, an open
connection, FIN_WAIT, TIME_WAIT), has the slot's shadow address as its peer, and the
port program has not seen the identity for a short grace (a SYN in flight has no
socket yet). Such a slot is released: its by_guest entry goes, the slot is marked free
with the release time, and the port's released counter grows.

The port program hands a released slot to another identity only after
`slot_reuse_delay_s`, longer than the responder's per-slot identity cache, so a worker
can never answer a new identity with the previous one's cached record.

In the responder namespace (our own, never the host's) a SYN's request sock is given up
after two SYN-ACK retries (responder_side.shorten_synack_retries), so the slot of a
spoofed SYN comes back in seconds.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import itertools
import logging
import struct
import time
from pathlib import Path

from transparent_md.datapath import layout
from transparent_md.datapath.port_limits import add_released
from transparent_md.datapath.sock_diag import TcpPeers
from transparent_md.datapath.tables import open_table
from transparent_md.periodic import Periodic

log = logging.getLogger(__name__)

# How often idle slots are looked for: a slot comes back within about a second of its
# last socket closing.
RELEASE_INTERVAL_S = 1.0
# A slot seen this recently is kept even without a socket: a SYN can be on its way to
# the responder (redirected, not yet a request sock). Longer than the port program's
# last-seen refresh period (1 s), so a live identity always looks live.
RELEASE_GRACE_S = 2.0
# A released slot waits this long before another identity may take it: the responder
# caches identity per slot for layout.IDENTITY_CACHE_TTL_S, plus room for a slow worker.
DEFAULT_SLOT_REUSE_DELAY_S = layout.IDENTITY_CACHE_TTL_S + 5.0
assert DEFAULT_SLOT_REUSE_DELAY_S > layout.IDENTITY_CACHE_TTL_S, \
    "reuse must outlast the identity cache"
_NS_PER_S = 1_000_000_000
# After a socket dump that took T, the next waits at least T * DUMP_PACING: at most 5 %
# of the time goes to dumping, however many sockets the responder namespace holds.
DUMP_PACING = 20.0
# Reading slots in the mapped table: a Slot is 10 u32 words, ifindex first.
_SLOT_SIZE = ctypes.sizeof(layout.Slot)
_SLOT_WORDS = _SLOT_SIZE // ctypes.sizeof(ctypes.c_uint32)
_LAST_SEEN_OFFSET = layout.Slot.last_seen_ns.offset
_U64 = struct.Struct("=Q")


class SlotReleaser:
    """Releases idle slots every RELEASE_INTERVAL_S in a daemon thread; run_once() is
    one round (what the thread does, and what tests call)."""

    def __init__(self, pin_dir: str | Path, responder_netns_name: str | None,
                 shadow_prefix: str, *, grace_s: float = RELEASE_GRACE_S,
                 interval_s: float = RELEASE_INTERVAL_S) -> None:
        pin_dir = Path(pin_dir)
        self._slots = open_table(pin_dir, layout.MAP_SLOTS)
        self._by_guest = open_table(pin_dir, layout.MAP_BY_GUEST)
        self._released = open_table(pin_dir, layout.MAP_PORT_RELEASED)
        self._config = open_table(pin_dir, layout.MAP_CONFIG)
        self._peers = TcpPeers(responder_netns_name)
        self._shadow_net = int(ipaddress.IPv4Network(shadow_prefix).network_address)
        self._grace_ns = int(grace_s * _NS_PER_S)
        self._periodic = Periodic("slot-releaser", interval_s, lambda _: self.run_once(),
                                  logger=log)
        self.in_use = 0          # slots taken after the last round (a gauge)
        # The whole slot table as shared memory (the map is BPF_F_MMAPABLE): a round
        # reads what the port program wrote, with no copy and no system call.
        self._mapping = self._slots.mapped(layout.Slot, layout.MAX_SLOTS)
        self._table = memoryview(self._mapping)
        self._ifindexes = self._table.cast("I")[::_SLOT_WORDS]
        self.released_total = 0  # slots released since start
        self._next_dump = 0.0    # monotonic time before which no socket dump runs

    # -- one round ------------------------------------------------------------------
    def run_once(self) -> int:
        """Release every idle slot; returns how many were released."""
        taken = self._taken_slots()
        if not taken:
            self.in_use = 0
            return 0
        # Only slots unseen for the grace period are candidates; while every guest is
        # busy (a boot storm, a benchmark) there are none, and the socket dump, the
        # costly part of a round, is skipped.
        recent = time.monotonic_ns() - self._grace_ns
        table = self._table
        idle = [index for index in taken
                if _U64.unpack_from(table, index * _SLOT_SIZE + _LAST_SEEN_OFFSET)[0] <= recent]
        if not idle:
            self.in_use = len(taken)
            return 0
        # The dump is paced by its own cost: with tens of thousands of sockets (TIME_WAIT
        # after a storm) it is Python work holding the GIL, which the serving loop in this
        # process waits for at every system call; slots can come back a little later.
        started = time.monotonic()
        if started < self._next_dump:
            self.in_use = len(taken)
            return 0
        # Sockets are listed before last-seen is judged again (from a fresh read, right
        # before a release): a SYN arriving in between refreshes last-seen, so its slot is
        # kept even though its socket was not seen yet.
        peers = self._peers.peers()
        self._next_dump = started + (time.monotonic() - started) * DUMP_PACING
        released = 0
        for index in idle:
            if self._shadow_net | index in peers:
                continue
            if self._release_if_idle(index):
                released += 1
        self.in_use = len(taken) - released
        self.released_total += released
        return released

    def _taken_slots(self) -> list[int]:
        """Indexes of the taken slots (ifindex set) among the configured ones."""
        cfg = layout.Config()
        if not self._config.lookup(ctypes.c_uint32(0), cfg) or cfg.shadow_slots == 0:
            return []
        count = min(cfg.shadow_slots + 1, layout.MAX_SLOTS)
        # compress() walks the ifindex words in C: a Python loop over 65,536 slots would
        # hold the GIL for milliseconds every round, stalling the serving loop meanwhile.
        return [i for i in itertools.compress(range(count), self._ifindexes[:count]) if i]

    def _release_if_idle(self, index: int) -> bool:
        key = ctypes.c_uint32(index)
        slot = layout.Slot()
        if not self._slots.lookup(key, slot) or slot.ifindex == 0:
            return False
        now = time.monotonic_ns()
        if now - slot.last_seen_ns < self._grace_ns:
            return False
        guest = layout.guest_key(slot)
        points_to = ctypes.c_uint32()
        if self._by_guest.lookup(guest, points_to) and points_to.value == index:
            self._by_guest.delete(guest)
        self._slots.update(key, layout.Slot(free_since_ns=now))
        add_released(self._released, slot.ifindex, identities=1)
        log.debug("released slot %d (%s %s on ifindex %d)", index,
                  layout.mac_str(slot.mac), layout.slot_ip(slot), slot.ifindex)
        return True

    # -- the thread -----------------------------------------------------------------
    def start(self) -> None:
        self._periodic.start()

    def stop(self) -> None:
        self._periodic.stop()
        self._ifindexes.release()
        self._table.release()
        with contextlib.suppress(BufferError):  # a view still held elsewhere: GC unmaps
            self._mapping.close()
        for handle in (self._slots, self._by_guest, self._released, self._config):
            handle.close()
        self._peers.close()
