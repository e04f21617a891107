"""Accept connections on the daemon's listening socket, pausing before fds run out.

The responder accepts for itself (`rawsock.Acceptor`, a batch per wake-up of the
loop) and hands each descriptor to `connections`; no asyncio server is involved, so
the backlog the socket's owner chose stays as it is (asyncio's create_server() would
listen() again with 100, which a 1,000-guest boot storm overflowed).

The listening socket defers accepting until a connection's first data has arrived
(TCP_DEFER_ACCEPT): the request is then read in the same pass that accepts it. A
client that sends nothing is still accepted after about `DEFER_ACCEPT_S` (the kernel
then completes it on its next ACK) and meets the idle and header timeouts as before.

Connections are kept below a descriptor budget (the soft RLIMIT_NOFILE less a reserve
for the store, metrics and stats files): at the budget accepting stops, leaving new
connections in the kernel's backlog, and looks again every `pause` seconds; open
connections are served throughout. accept4 failing with EMFILE/ENFILE pauses the
same way. `watch()` (run by the responder's sweeper) is the safety net: connections
that waited in the backlog at two looks in a row with none accepted in between while
accepting was meant to run restart it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import resource
import socket
import struct
from collections.abc import Callable

from transparent_md.responder.connections import Connections
from transparent_md.responder.rawsock import Acceptor

log = logging.getLogger(__name__)

_OUT_OF_FDS = (errno.EMFILE, errno.ENFILE)
# A connection reset or refused (by a firewall hook) between the handshake and accept4:
# the next one may be fine (see accept(2)).
_GONE_BEFORE_ACCEPTED = (errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ENETDOWN,
                         errno.ENOPROTOOPT, errno.EHOSTDOWN, errno.ENONET,
                         errno.EHOSTUNREACH, errno.EOPNOTSUPP, errno.ENETUNREACH)
# Connections accepted per wake-up of the loop before others get a turn.
ACCEPT_BATCH = 64
# How long an accepted-but-silent connection may wait for its first byte in the kernel
# (rounded up to SYN-ACK retransmissions: 1 s is one).
DEFER_ACCEPT_S = 1
# struct tcp_info (linux/tcp.h): eight u8 fields, then u32 rto, ato, snd_mss, rcv_mss and
# tcpi_unacked, which for a listening socket is its accept queue's length.
_TCP_INFO_UNACKED_OFFSET = 24
# ... and tcpi_sacked, the next u32, which for a listening socket is its backlog.
_TCP_INFO_SACKED_OFFSET = 28
_U32 = struct.Struct("=I")
_TCP_INFO_LENGTH = 104


def _tcp_info_u32(sock: socket.socket, offset: int) -> int | None:
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LENGTH)
    except OSError:
        return None
    if len(info) < offset + _U32.size:
        return None
    return _U32.unpack_from(info, offset)[0]


def accept_queue_length(sock: socket.socket) -> int:
    """Connections the kernel has completed that nobody has accepted yet (0 if unknown)."""
    return _tcp_info_u32(sock, _TCP_INFO_UNACKED_OFFSET) or 0


def listen_backlog(sock: socket.socket) -> int:
    """The backlog `sock` listens with (after the kernel's somaxconn clamp); if it cannot
    be read, socket.SOMAXCONN."""
    return _tcp_info_u32(sock, _TCP_INFO_SACKED_OFFSET) or socket.SOMAXCONN


def descriptor_budget(reserve: int) -> int:
    """Connections this process may hold: the soft fd limit less `reserve` and fds in use."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:
        in_use = 0
    return max(1, soft - reserve - in_use)


class Listener:
    """Accepts on `sock` and serves each connection with `protocol_factory` through
    `connections` (which the caller closes)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                 protocol_factory: Callable[[], asyncio.Protocol], connections: Connections,
                 pause_s: float, open_connections: Callable[[], int], budget: int,
                 on_pause: Callable[[], None],
                 on_restart: Callable[[], None] = lambda: None) -> None:
        self._loop = loop
        self._sock = sock
        self._factory = protocol_factory
        self._pause_s = pause_s
        self._open_connections = open_connections
        self.budget = budget
        self._on_pause = on_pause
        self._on_restart = on_restart
        self._connections = connections
        self._acceptor = Acceptor(sock)
        self.fileno = sock.fileno()
        self._resume: asyncio.TimerHandle | None = None
        self._closed = False
        self._accepting = False
        self._waiting_at_last_look = 0
        self._accepted_at_last_look = 0
        self.accepted = 0
        self.paused = False
        self.backlog = listen_backlog(sock)

    async def start(self) -> None:
        self._sock.setblocking(False)  # accept4 is tried until nothing waits
        with contextlib.suppress(OSError):  # not TCP: accepted as it comes
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, DEFER_ACCEPT_S)
            # Accepted sockets inherit it: a reply's last partial segment never waits
            # for the ACK of the ones before it (what uvloop set per connection).
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._start_accepting()

    def _start_accepting(self) -> None:
        if not self._accepting:
            self._loop.add_reader(self.fileno, self._accept_ready)
            self._accepting = True

    def _stop_accepting(self) -> None:
        if self._accepting:
            self._loop.remove_reader(self.fileno)
            self._accepting = False

    def _accept_ready(self) -> None:
        connections = self._connections
        acceptor = self._acceptor
        factory = self._factory
        connections.begin_pass()
        try:
            for _ in range(ACCEPT_BATCH):
                try:
                    accepted = acceptor.accept()
                except OSError as exc:
                    if exc.errno in _OUT_OF_FDS:
                        self.pause()
                        break
                    if exc.errno in _GONE_BEFORE_ACCEPTED:
                        continue
                    log.error("accepting failed: %s", exc)
                    self.pause()
                    break
                if accepted is None:
                    break
                self.accepted += 1
                connections.serve(accepted[0], accepted[1], factory())
                if self.paused:
                    break
        finally:
            connections.end_pass()

    def check(self) -> None:
        """Called as a connection opens: pause at the descriptor budget."""
        if not self.paused and self._open_connections() >= self.budget:
            self.pause()

    def pause(self) -> None:
        """Stop accepting; resume once connections are below the budget again."""
        if self.paused or self._closed:
            return
        self.paused = True
        self._on_pause()
        log.warning("accepting paused: %d connections open, budget %d file descriptors "
                    "(raise LimitNOFILE or lower the per-guest caps)",
                    self._open_connections(), self.budget)
        self._stop_accepting()
        self._resume = self._loop.call_later(self._pause_s, self._try_resume)

    def watch(self) -> None:
        """Restart accepting if connections wait in the backlog and nobody takes them."""
        accepted, self._accepted_at_last_look = (self.accepted - self._accepted_at_last_look,
                                                 self.accepted)
        if self.paused or self._closed:
            self._waiting_at_last_look = 0
            return
        waiting = accept_queue_length(self._sock)
        if waiting and self._waiting_at_last_look and not accepted:
            self._on_restart()
            log.warning("accepting restarted: %d connections were waiting in the backlog",
                        waiting)
            self._stop_accepting()
            self._start_accepting()
            self._loop.call_soon(self._accept_ready)
            waiting = 0
        self._waiting_at_last_look = waiting

    def _try_resume(self) -> None:
        self._resume = None
        if self._closed:
            return
        if self._open_connections() >= self.budget:
            self._resume = self._loop.call_later(self._pause_s, self._try_resume)
            return
        self.paused = False
        self._start_accepting()
        log.warning("accepting resumed: %d connections open", self._open_connections())

    def close(self) -> None:
        """Stop accepting for good (the caller closes the listening socket)."""
        self._closed = True
        if self._resume is not None:
            self._resume.cancel()
        self._stop_accepting()

    async def wait_closed(self) -> None:
        """For callers written against asyncio.Server."""
