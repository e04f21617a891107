"""Guest connections served on their bare descriptors, one epoll per event loop.

A booting guest opens a connection for nearly every request, so what a connection
costs is what a boot storm costs. uvloop's transports spend system calls per
connection that nothing here needs: a TCP_NODELAY (accepted sockets inherit it from
the listening socket), a getsockname and a getpeername for its address cache, an epoll
add and, on close, an epoll delete. Served on the descriptor instead, for the
connection's whole life:

- `Acceptor` (accept4) returns a non-blocking descriptor and the peer in one call;
- the listening socket defers accepting until the request has arrived
  (TCP_DEFER_ACCEPT, see `accepting`), so `serve()` reads it at once: a guest that
  says `Connection: close` costs accept4, read, send, close, and never joins an epoll;
- a connection that stays open joins this module's epoll (one epoll_ctl), which the
  event loop watches as a single descriptor; closing the descriptor takes it out of
  the epoll with no call of its own. Keep-alive requests are read and answered from
  that epoll's events, on the same transport.

`SocketTransport` is the part of asyncio.Transport that `MetadataProtocol` uses, with
asyncio's semantics: writes that the socket does not take wait in a buffer, close()
waits for that buffer, connection_lost() comes after the callback that closed it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select

from transparent_md.responder.ratelog import RateLimitedLog
from transparent_md.responder.rawsock import RawSocketCalls

log = logging.getLogger(__name__)

# One read takes any request head and small body whole; a connection whose output is
# over its ceiling holds at most one read's worth of requests waiting (`protocol`).
READ_SIZE = 16 * 1024
# Events taken per pass of the loop; more wait for the next pass (level-triggered).
MAX_EVENTS = 512
# Unsent bytes past which the protocol is told to stop producing (asyncio's default,
# unless the responder sets its ceiling), and the fraction of it below which it may again.
HIGH_WATER = 64 * 1024
LOW_WATER_FRACTION = 4

_IN = select.EPOLLIN
_OUT = select.EPOLLOUT
_TROUBLE = select.EPOLLERR | select.EPOLLHUP
_READ_EVENTS = _IN | _TROUBLE
_TRY_AGAIN = (BlockingIOError, InterruptedError)


class Connections:
    """The open connections of one event loop and the epoll that watches them."""

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 raw_calls: RawSocketCalls | None = None, high_water: int = HIGH_WATER,
                 events: RateLimitedLog | None = None) -> None:
        self._loop = loop
        # Where an unexpected error serving a connection is told: a guest may cause it
        # at will, so one line per guest per interval (see `ratelog`).
        self._events = events if events is not None else RateLimitedLog(log)
        # Every connection's write buffer limits (see SocketTransport.write).
        self.high_water = high_water
        self.low_water = high_water // LOW_WATER_FRACTION
        self._epoll = select.epoll()
        self._open: dict[int, SocketTransport] = {}
        # connection_lost calls owed for connections closed during the current pass.
        self._lost: list[tuple[SocketTransport, Exception | None]] = []
        self._passes = 0
        self._flush_scheduled = False
        self.raw_calls = raw_calls if raw_calls is not None else RawSocketCalls()
        loop.add_reader(self._epoll.fileno(), self._poll)

    def __len__(self) -> int:
        return len(self._open)

    def serve(self, fd: int, peer: tuple[str, int], protocol: asyncio.Protocol) -> None:
        """Give accepted descriptor `fd` to `protocol` and read what already arrived.

        Call between begin_pass() and end_pass().
        """
        transport = SocketTransport(self, fd, peer, protocol)
        self._open[fd] = transport
        try:
            protocol.connection_made(transport)
            if transport._reading:
                transport._read_ready()
            if transport._fd >= 0:
                transport._watch()
        except Exception as exc:
            self._failed(transport, exc)

    def begin_pass(self) -> None:
        """Hold back connection_lost calls until end_pass() (see the module doc)."""
        self._passes += 1

    def end_pass(self) -> None:
        self._passes -= 1
        if not self._passes and self._lost:
            self._flush_lost()

    def close(self) -> None:
        """Stop watching (the caller closes the connections first)."""
        for transport in list(self._open.values()):
            transport.abort()
        self._loop.remove_reader(self._epoll.fileno())
        self._epoll.close()
        self._flush_lost()

    # -- for SocketTransport ------------------------------------------------------

    def _register(self, fd: int, events: int) -> None:
        self._epoll.register(fd, events)

    def _modify(self, fd: int, events: int) -> None:
        self._epoll.modify(fd, events)

    def _closed(self, fd: int, transport: SocketTransport, exc: Exception | None) -> None:
        self._open.pop(fd, None)
        self._lost.append((transport, exc))
        if not self._passes and not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush_lost)

    # -- the loop's side --------------------------------------------------------------

    def _poll(self) -> None:
        try:
            events = self._epoll.poll(0, MAX_EVENTS)
        except InterruptedError:
            return
        connections = self._open
        self._passes += 1
        try:
            for fd, mask in events:
                transport = connections.get(fd)
                if transport is None:
                    continue  # closed earlier in this pass
                try:
                    if mask & _READ_EVENTS:
                        if transport._reading:
                            transport._read_ready()
                        else:
                            transport._trouble(mask)
                    if mask & _OUT and transport._fd >= 0:
                        transport._write_ready()
                except Exception as exc:
                    self._failed(transport, exc)
        finally:
            self.end_pass()

    def _failed(self, transport: SocketTransport, exc: Exception) -> None:
        """A protocol callback raised: say so (rate-limited) and close the connection."""
        guest = getattr(transport._protocol, "guest", None)
        self._events.error("connection-error", guest,
                           f"serving the connection from {transport._peer[0]} failed", exc)
        transport._force_close(exc)

    def _flush_lost(self) -> None:
        self._flush_scheduled = False
        lost, self._lost = self._lost, []
        for transport, exc in lost:
            protocol = transport._protocol
            # The protocol holds its transport: without this the pair would be a cycle
            # that only the cyclic GC frees, a pile of them per second under load and
            # a GC pause in some request's latency.
            transport._protocol = None
            try:
                protocol.connection_lost(exc)
            except Exception:
                log.exception("connection_lost failed")


class SocketTransport(asyncio.Transport):
    """One connection's descriptor as the asyncio.Transport its protocol writes to."""

    __slots__ = ("_owner", "_fd", "_peer", "_protocol", "_buffer", "_events", "_reading",
                 "_closing", "_eof", "_write_paused")

    def __init__(self, owner: Connections, fd: int, peer: tuple[str, int],
                 protocol: asyncio.Protocol) -> None:
        self._owner = owner
        self._fd = fd
        self._peer = peer
        self._protocol = protocol
        self._buffer = bytearray()
        self._events = -1  # the epoll mask; -1 while not registered
        self._reading = True
        self._closing = False
        self._eof = False  # write_eof() called
        self._write_paused = False

    # -- asyncio.Transport ------------------------------------------------------------

    def get_extra_info(self, name: str, default=None):
        if name == "peername":
            return self._peer
        return default

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol  # e.g. an operator probe's (see responder.probe)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def fileno(self) -> int:
        """The connection's descriptor, -1 once closed (for `rawsock` calls)."""
        return self._fd

    def is_closing(self) -> bool:
        return self._closing

    def is_reading(self) -> bool:
        return self._reading

    def pause_reading(self) -> None:
        if self._reading and not self._closing:
            self._reading = False
            self._watch()

    def resume_reading(self) -> None:
        if not self._reading and not self._closing:
            self._reading = True
            self._watch()

    def get_write_buffer_size(self) -> int:
        return len(self._buffer)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._owner.low_water, self._owner.high_water

    def write(self, data: bytes) -> None:
        if self._fd < 0 or self._eof:
            return
        buffer = self._buffer
        if not buffer:
            try:
                sent = os.write(self._fd, data)
            except _TRY_AGAIN:
                sent = 0
            except OSError as exc:
                self._force_close(exc)
                return
            if sent == len(data):
                return
            buffer += memoryview(data)[sent:]
            self._watch()
        else:
            buffer += data
        if not self._write_paused and len(buffer) > self._owner.high_water:
            self._write_paused = True
            self._protocol.pause_writing()

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if self._fd < 0 or self._eof:
            return
        self._eof = True
        if not self._buffer:
            self._owner.raw_calls.shutdown_write(self._fd)

    def close(self) -> None:
        if self._closing or self._fd < 0:
            return
        self._closing = True
        self._reading = False
        if self._buffer:
            self._watch()  # the buffer drains, then _write_ready closes
        else:
            self._force_close(None)

    def abort(self) -> None:
        self._force_close(None)

    def reset(self) -> None:
        """Abort with a reset (SO_LINGER 0): nothing queued, here or in the socket, is
        kept for a peer that does not take it."""
        if self._fd >= 0:
            self._owner.raw_calls.reset_on_close(self._fd)
        self._force_close(None)

    # -- the loop's side ----------------------------------------------------------------

    def _read_ready(self) -> None:
        try:
            data = os.read(self._fd, READ_SIZE)
        except _TRY_AGAIN:
            return
        except OSError as exc:  # reset by the peer
            self._force_close(exc)
            return
        if data:
            self._protocol.data_received(data)
            return
        self._reading = False
        if self._protocol.eof_received():
            self._watch()  # half-closed: keep writing
        else:
            self.close()

    def _write_ready(self) -> None:
        buffer = self._buffer
        if buffer:
            try:
                sent = os.write(self._fd, buffer)
            except _TRY_AGAIN:
                return
            except OSError as exc:
                self._force_close(exc)
                return
            del buffer[:sent]
            if self._write_paused and len(buffer) <= self._owner.low_water:
                self._write_paused = False
                self._protocol.resume_writing()
            if buffer or self._fd < 0:
                return
        if self._closing:
            self._force_close(None)
            return
        if self._eof:
            self._owner.raw_calls.shutdown_write(self._fd)
        self._watch()

    def _trouble(self, mask: int) -> None:
        """An error or hang-up while not reading: writing will fail or nobody hears it."""
        if self._buffer:
            self._write_ready()
        if self._fd >= 0 and (mask & select.EPOLLHUP or not self._buffer):
            self._force_close(None)

    def _watch(self) -> None:
        """Bring the epoll registration in line with what this connection waits for."""
        if self._fd < 0:
            return
        wanted = (_IN if self._reading else 0) | (_OUT if self._buffer else 0)
        if wanted == self._events:
            return
        if self._events < 0:
            self._owner._register(self._fd, wanted)
        else:
            self._owner._modify(self._fd, wanted)
        self._events = wanted

    def _force_close(self, exc: Exception | None) -> None:
        fd = self._fd
        if fd < 0:
            return
        self._fd = -1
        self._closing = True
        self._reading = False
        self._buffer.clear()
        try:  # noqa: SIM105 (per connection: a plain try costs nothing, suppress() a call)
            os.close(fd)  # also leaves the epoll: nothing else holds this descriptor
        except OSError:
            pass
        self._owner._closed(fd, self, exc)
