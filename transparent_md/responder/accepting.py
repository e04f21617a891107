"""Accept connections on the daemon's listening socket, pausing before fds run out.

libuv (under uvloop) meets EMFILE by accepting and at once closing every pending
connection, silently; and if even that fails it reports the error and the server
stops accepting for good. So the responder keeps its own connections below a
descriptor budget (the soft RLIMIT_NOFILE less a reserve for the store, metrics and
stats files): at the budget it stops accepting, leaving new connections in the
kernel's backlog, and looks again every `pause` seconds; open connections are served
throughout. An EMFILE/ENFILE that still reaches the loop's exception handler pauses
the same way instead of ending the server. And since uvloop, when even libuv's EMFILE
fallback fails, closes its server without telling anyone, `watch()` (run by the
responder's sweeper) restarts accepting when connections have waited in the backlog
at two looks in a row while accepting was meant to run.

asyncio servers cannot pause, so accepting runs on a duplicate descriptor of the
listening socket: closing that server stops accepting while the socket itself (and
its backlog) stays open, and a new duplicate resumes. create_server() calls listen()
again on what it serves, with asyncio's default backlog of 100 unless told otherwise,
which silently shrank the daemon's 4096: a boot storm of 1,000 guests then overflowed
the accept queue (dropped handshakes, 1 s SYN retransmissions, timeouts). So the
backlog the socket's owner chose is read back from the socket and passed on.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
import socket
import struct
from collections.abc import Callable

log = logging.getLogger(__name__)

_OUT_OF_FDS = (errno.EMFILE, errno.ENFILE)
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
    """Serves `sock` with `protocol_factory`; `pause()` stops accepting for a while."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                 protocol_factory: Callable[[], asyncio.Protocol],
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
        self._server: asyncio.AbstractServer | None = None
        self._resume: asyncio.TimerHandle | None = None
        self._closed = False
        self._waiting_at_last_look = 0
        self.paused = False
        # Read once: every duplicate is served with the owner's backlog (see above).
        self.backlog = listen_backlog(sock)

    @property
    def server(self) -> asyncio.AbstractServer | None:
        """The server accepting now (None while paused)."""
        return self._server

    async def start(self) -> None:
        await self._serve()
        previous = self._loop.get_exception_handler()

        def handler(loop: asyncio.AbstractEventLoop, context: dict) -> None:
            exc = context.get("exception")
            if isinstance(exc, OSError) and exc.errno in _OUT_OF_FDS:
                self.pause()
                return
            if previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)

        self._loop.set_exception_handler(handler)

    async def _serve(self) -> None:
        duplicate = socket.socket(fileno=os.dup(self._sock.fileno()))
        try:
            self._server = await self._loop.create_server(self._factory, sock=duplicate,
                                                          backlog=self.backlog)
        except BaseException:
            duplicate.close()
            raise

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
        if self._server is not None:
            self._server.close()
            self._server = None
        self._resume = self._loop.call_later(self._pause_s, self._try_resume)

    def watch(self) -> None:
        """Restart accepting if connections wait in the backlog and nobody takes them."""
        if self.paused or self._closed:
            self._waiting_at_last_look = 0
            return
        waiting = accept_queue_length(self._sock)
        if waiting and self._waiting_at_last_look:
            self._on_restart()
            log.warning("accepting restarted: %d connections were waiting in the backlog",
                        waiting)
            if self._server is not None:
                self._server.close()
                self._server = None
            self.paused = True  # until the new server is up
            self._loop.create_task(self._resume_accepting())
            waiting = 0
        self._waiting_at_last_look = waiting

    def _try_resume(self) -> None:
        self._resume = None
        if self._closed:
            return
        if self._open_connections() >= self.budget:
            self._resume = self._loop.call_later(self._pause_s, self._try_resume)
            return
        self._loop.create_task(self._resume_accepting())

    async def _resume_accepting(self) -> None:
        try:
            await self._serve()
        except OSError as exc:
            if exc.errno not in _OUT_OF_FDS:
                raise
            self._resume = self._loop.call_later(self._pause_s, self._try_resume)
            return
        if self._closed:
            self._server.close()
            return
        self.paused = False
        log.warning("accepting resumed: %d connections open", self._open_connections())

    def close(self) -> None:
        """Stop accepting for good (the caller closes the listening socket)."""
        self._closed = True
        if self._resume is not None:
            self._resume.cancel()
        if self._server is not None:
            self._server.close()
            self._server = None

    async def wait_closed(self) -> None:
        """For callers written against asyncio.Server."""
