"""Our filter stays on every attached port: put back as soon as it goes, and logged.

Someone running `tc filter del` (or a tool that flushes clsact, or another program
replacing ours at our priority/handle) silently cuts guests off. The guard compares
the program id at our position on a port with ours, restores it when it differs, logs
a warning naming the port, and counts it.

Which ports to look at comes from the kernel: the guard listens to rtnetlink's traffic
control group, and a filter or qdisc added, replaced or deleted on an attached port
gets that port checked a moment later (`SETTLE_S`, so a port being deleted is
forgotten by the port follower first, not "restored"). Checking every port on a timer
instead cost one filter dump per port per round: with 1,000 guests, a third of a core
and the responder's GIL. So nothing depends on every event arriving, every port is
also checked once per `SWEEP_S`, a slice each second (a whole round at once would hold
the GIL the serving loop waits for), and all of them at once when the kernel dropped
events (ENOBUFS).

The status file and `status` read what the last check found (`missing_now`).
"""

from __future__ import annotations

import errno
import logging
import math
import select
import socket
import struct
import threading
import time

from pyroute2 import IPRoute
from pyroute2.netlink import NETLINK_ROUTE
from pyroute2.netlink.exceptions import NetlinkError

from transparent_md.datapath import tc
from transparent_md.datapath.ports import PortAttacher
from transparent_md.process import start_thread

log = logging.getLogger(__name__)

# Every port is checked once in this long, whatever the events said, a slice a second.
SWEEP_S = 60.0
SLICE_INTERVAL_S = 1.0
# A port named by an event is checked this long after it, once the burst is over.
SETTLE_S = 0.2
# How often the thread looks whether it was asked to stop.
STOP_POLL_S = 0.5
# rtnetlink multicast group RTNLGRP_TC (4) as a bind() mask.
RTMGRP_TC = 1 << (4 - 1)
EVENT_BUFFER_BYTES = 1 << 20
# One read takes what is queued up to this (a tc message is under 1 KiB): a 1 MiB
# buffer per read would leave glibc holding fragments of them for good.
RECV_BYTES = 1 << 16
# Message types that can take our filter away or put a foreign one at our position.
_TC_CHANGES = frozenset({
    36, 37,    # RTM_NEWQDISC, RTM_DELQDISC (clsact replaced or removed)
    44, 45,    # RTM_NEWTFILTER, RTM_DELTFILTER
    100, 101,  # RTM_NEWCHAIN, RTM_DELCHAIN
})
# struct nlmsghdr (len, type, flags, seq, pid), then struct tcmsg: family, 3 pad bytes,
# ifindex.
_NLMSG = struct.Struct("=IHHII")
_TCMSG_IFINDEX = struct.Struct("=i")
_TCMSG_IFINDEX_OFFSET = 4


def changed_ifindexes(buffer: bytes) -> set[int]:
    """Interfaces named by the traffic-control change messages in one netlink read."""
    out: set[int] = set()
    offset = 0
    while offset + _NLMSG.size <= len(buffer):
        length, kind = _NLMSG.unpack_from(buffer, offset)[:2]
        if length < _NLMSG.size:
            break
        body = offset + _NLMSG.size
        if kind in _TC_CHANGES and body + _TCMSG_IFINDEX_OFFSET + 4 <= len(buffer):
            out.add(_TCMSG_IFINDEX.unpack_from(buffer, body + _TCMSG_IFINDEX_OFFSET)[0])
        offset += (length + 3) & ~3
    return out


class SweepSlices:
    """Hands out the ports a slice at a time, so `slices` slices cover all of them."""

    def __init__(self, slices: float) -> None:
        self._slices = max(1.0, slices)
        self._pending: list[int] = []

    def next_slice(self, ports) -> set[int]:
        """The next few ports of the current round (a new round starts when one ends)."""
        if not self._pending:
            self._pending = sorted(ports, reverse=True)
            self._size = max(1, math.ceil(len(self._pending) / self._slices))
        taken = self._pending[-self._size:]
        del self._pending[-self._size:]
        return set(taken)


class FilterGuard:
    """Background check-and-restore of our tc filter on every port the attacher holds."""

    def __init__(self, attacher: PortAttacher, prog_id: int, position: tc.FilterPosition,
                 sweep_s: float = SWEEP_S) -> None:
        self.attacher = attacher
        self.prog_id = prog_id
        self.position = position
        self.sweep_s = sweep_s
        self.restored = 0
        # Ports whose filter the last look found missing and could not put back.
        self.missing_now: frozenset[str] = frozenset()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def missing(self, ipr: IPRoute) -> list[str]:
        """Names of attached ports whose filter at our position is not our program now."""
        return [info.name for info in list(self.attacher.attached.values())
                if self.prog_id not in tc.our_filter_ids(ipr, info.ifindex, self.position)]

    def check_once(self, ipr: IPRoute, ifindexes: set[int] | None = None) -> list[str]:
        """Restore every missing filter (on `ifindexes`, or every port); names restored."""
        restored = []
        still_missing = set(self.missing_now)
        attached = self.attacher.attached
        for ifindex in list(attached) if ifindexes is None else sorted(ifindexes):
            info = attached.get(ifindex)
            if info is None:
                continue  # not ours, or forgotten meanwhile
            if self.prog_id in tc.our_filter_ids(ipr, info.ifindex, self.position):
                still_missing.discard(info.name)
                continue
            try:
                if self.attacher.restore_filter(ipr, info.ifindex) is None:
                    continue  # forgotten meanwhile
            except NetlinkError as exc:
                if exc.code == errno.ENODEV:
                    continue  # the port is being deleted; the follower forgets it
                self._cannot_restore(info.name, exc, still_missing)
                continue
            except Exception as exc:
                self._cannot_restore(info.name, exc, still_missing)
                continue
            still_missing.discard(info.name)
            self.restored += 1
            restored.append(info.name)
            log.warning("our filter on port %s (bridge %s) was removed or replaced; restored",
                        info.name, info.bridge)
        self.missing_now = frozenset(still_missing & {i.name for i in attached.values()})
        return restored

    @staticmethod
    def _cannot_restore(name: str, exc: Exception, still_missing: set[str]) -> None:
        still_missing.add(name)
        log.warning("our filter is missing on port %s and could not be restored: %s",
                    name, exc)

    def start(self) -> None:
        self._stop.clear()
        events = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        try:
            events.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, EVENT_BUFFER_BYTES)
            events.bind((0, RTMGRP_TC))
            events.setblocking(False)
        except OSError:
            events.close()
            raise
        self._thread = start_thread("filter-guard", lambda: self._run(events))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self, events: socket.socket) -> None:
        with events, IPRoute() as ipr:
            next_slice = time.monotonic() + SLICE_INTERVAL_S
            rounds = SweepSlices(self.sweep_s / SLICE_INTERVAL_S)
            dirty: set[int] = set()
            due = None  # when the ports in `dirty` are checked
            while not self._stop.is_set():
                now = time.monotonic()
                wake = min(next_slice, due if due is not None else next_slice)
                ready, _, _ = select.select([events], [], [],
                                            max(0.0, min(STOP_POLL_S, wake - now)))
                everything = False
                if ready:
                    changed, everything = self._drain(events)
                    dirty |= changed & set(self.attacher.attached)
                    if dirty and due is None:
                        due = time.monotonic() + SETTLE_S
                now = time.monotonic()
                try:
                    if everything:  # events were lost: look at every port now
                        dirty, due = set(), None
                        self.check_once(ipr)
                    elif due is not None and now >= due:
                        ports, dirty, due = dirty, set(), None
                        self.check_once(ipr, ports)
                    if now >= next_slice:
                        next_slice = now + SLICE_INTERVAL_S
                        self.check_once(ipr, rounds.next_slice(self.attacher.attached))
                except Exception:
                    log.exception("checking our filters failed; the next round runs as usual")

    @staticmethod
    def _drain(events: socket.socket) -> tuple[set[int], bool]:
        """Interfaces named by every pending event, and whether the kernel dropped some."""
        changed: set[int] = set()
        while True:
            try:
                changed |= changed_ifindexes(events.recv(RECV_BYTES))
            except BlockingIOError:
                return changed, False
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    return changed, True
                raise
