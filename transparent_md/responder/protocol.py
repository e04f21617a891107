"""One guest TCP connection: httptools parses, the dispatcher answers, bytes go out.

Everything a request needs is prepared before it arrives, so the per-request work
is: parse, one 8-byte "did the store change" check, a dict lookup, one write.
Protocol errors answer 4xx and close only this connection, lingering so the client
reads the status rather than a reset.

The per-guest defences (see `limits`) cost a few attribute reads per request: the
connection caps are checked once per connection, time limits are sweeper ticks
compared as integers, and the rate limit is one token-bucket take.

This runs once per request at tens of thousands of requests a second, so it is written
for CPython: slots, shared objects bound once per connection, no callback the parser
would call for nothing, and nothing per request that only a rare request needs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from time import perf_counter_ns
from typing import TYPE_CHECKING

import httptools

from transparent_md.responder import http, probe, rawsock
from transparent_md.responder.admission import identity_of
from transparent_md.responder.dispatch import STORE_UNAVAILABLE
from transparent_md.responder.gce import Wait
from transparent_md.responder.tokens import TOKEN_HEADER, TTL_REQUEST_HEADER
from transparent_md.store.errors import StoreFault, StoreUnavailable

if TYPE_CHECKING:
    from transparent_md.responder.connections import SocketTransport
    from transparent_md.responder.state import ResponderState

log = logging.getLogger(__name__)

_FORWARDED_HEADER = b"x-forwarded-for"
_FLAVOR_HEADER = b"metadata-flavor"  # GCE's clients send it; it selects that flavour
# Only these can make an HTTP/1.0 request keep-alive (llhttp honours both), so only a
# request carrying one needs the parser's version string (built anew at each call).
_CONNECTION_HEADERS = frozenset({b"connection", b"proxy-connection"})
_GET = b"GET"
_HEAD = b"HEAD"
_HTTP10 = "1.0"
# Headers we care about, recognised by length first so most headers cost no lower().
_INTERESTING_LENGTHS = frozenset(
    len(name) for name in (TOKEN_HEADER, TTL_REQUEST_HEADER, _FORWARDED_HEADER,
                           _FLAVOR_HEADER, *_CONNECTION_HEADERS))
# Bytes that may sit unparsed before a request line and headers complete: the header
# and URL limits plus slack, so a never-ending header line cannot grow the parser's
# buffer without bound.
MAX_HEAD_BYTES = http.MAX_HEADER_BYTES + http.MAX_URL_BYTES + 1024
# Where a request head ends (llhttp takes no bare LF): a read holding more than one is
# pipelined, and is parsed one head at a time (see data_received).
_HEAD_END = b"\r\n\r\n"


class _Reject(Exception):
    """Raised inside a parser callback to abort with the status in `status`."""

    def __init__(self, status: int) -> None:
        self.status = status


_REJECT_REPLIES = {
    400: http.BAD_REQUEST, 405: http.METHOD_NOT_ALLOWED, 408: http.REQUEST_TIMEOUT,
    413: http.PAYLOAD_TOO_LARGE, 414: http.URI_TOO_LONG, 429: http.TOO_MANY_REQUESTS,
    431: http.HEADERS_TOO_LARGE, 500: http.SERVER_ERROR,
}


class MetadataProtocol(asyncio.Protocol):
    """asyncio Protocol and httptools callback target for one connection.

    The parser calls only the callbacks defined here: per-request state is reset when
    a message completes (not in an on_message_begin), and the end of the head is seen
    from the first body byte (not in an on_headers_complete).
    """

    # What close_if_stale() closed a connection for.
    CLOSED_IDLE = "idle"
    CLOSED_HEADER_TIMEOUT = "header-timeout"
    RESET_SEND_TIMEOUT = "send-timeout"

    __slots__ = (
        "_state", "_store", "_dispatcher", "_responses", "_parser", "_transport", "_guest",
        "_identity", "_snapshot", "_prepared", "_closing", "_write_paused", "_ttl_lowered",
        "_in_head", "_unparsed", "_url", "_header_bytes", "_token", "_ttl",
        "_forwarded", "_flavor", "_waiting", "_connection_header", "_body", "_reject",
        "_admitted", "_forged",
        "_bucket", "_requests_left", "_expires_tick", "_active_tick", "_head_tick",
        "_linger_left", "_linger_timer", "_last_status", "_fd", "_extras", "_held",
        "_unsent_tick", "_unsent_bytes",
    )

    def __init__(self, state: ResponderState) -> None:
        self._state = state
        self._store = state.store
        self._dispatcher = state.dispatcher
        self._responses = state.stats.responses
        self._parser = httptools.HttpRequestParser(self)
        self._transport: SocketTransport | None = None
        self._fd = -1
        self._guest = None
        self._snapshot = None
        self._prepared = None
        self._closing = False
        self._write_paused = False
        # A token reply lowered this socket's TTL and it is not restored yet.
        self._ttl_lowered = False
        self._in_head = True
        self._unparsed = 0
        self._reject = 400
        self._last_status = 0
        self._admitted = False
        self._forged = False
        self._bucket = None
        self._requests_left = state.limits.keepalive_requests
        self._active_tick = self._head_tick = state.tick
        self._expires_tick = state.tick + state.keepalive_ticks
        self._linger_left = 0
        self._linger_timer: asyncio.TimerHandle | None = None
        # Pipelined input read but not parsed while the output is over its ceiling.
        self._held = b""
        # A GCE long poll held (see longpoll): (wait, method, keep-alive, HTTP/1.0 with a
        # Connection header, deadline), or None.
        self._waiting: tuple | None = None
        # The sweeper tick since which output waits unsent with no progress (-1: none
        # waits), and how much waited at the last sweep.
        self._unsent_tick = -1
        self._unsent_bytes = 0
        self._extras = True  # nothing is set yet: _reset_request() sets it all
        self._reset_request()

    def _reset_request(self) -> None:
        """Forget the request just answered (or start clean on a new connection)."""
        self._url = b""
        self._header_bytes = 0
        if self._extras:
            self._reset_extras()

    def _reset_extras(self) -> None:
        """Forget what only some requests carry (the hot path skips this when unset)."""
        self._extras = False
        self._token: bytes | None = None
        self._ttl: bytes | None = None
        self._forwarded = False
        self._flavor: bytes | None = None
        self._connection_header = False
        self._body = b""

    # -- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._fd = transport.fileno()
        state = self._state
        stats = state.stats
        # The peer came with accept4: asking costs no system call.
        peer = transport.get_extra_info("peername")
        guest = None
        try:
            guest = state.resolver(peer[0]) if peer else None
        except Exception as exc:
            state.events.error("resolve-error", None,
                               f"resolving the guest behind {peer[0]} failed", exc)
        if guest is None and peer and probe.is_operator_probe(peer[0]):
            self._parser = None  # no guest: answered apart, counted nowhere
            answer = probe.OperatorProbe()
            transport.set_protocol(answer)
            answer.connection_made(transport)
            return
        stats.connections_opened += 1
        self._guest = guest
        self._identity = key = identity_of(guest)
        refused = state.caps.admit(guest, key)
        if refused is not None:
            stats.connections_refused[refused] += 1
            state.events.warn("refused-" + refused, guest,
                              f"connection refused: at the per-{refused} connection cap")
            self._closing = True
            transport.abort()  # frees the descriptor now; nothing was read or promised
            return
        self._admitted = True
        state.connections.add(self)
        stats.open_connections += 1
        if stats.open_connections > state.reclaimer.peak:
            state.reclaimer.peak = stats.open_connections
        if guest is None:
            stats.connections_unknown_guest += 1
        self._bucket = state.buckets.bucket_for(key)
        if state.listener is not None:
            state.listener.check()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        # The parser holds bound methods of this protocol: break the cycle so both go
        # now, by reference counting, instead of piling up for the cyclic GC.
        self._parser = None
        self._held = b""
        if self._waiting is not None:
            self._waiting = None
            self._state.long_polls.drop(self)
        if not self._admitted:
            return
        self._admitted = False
        state = self._state
        state.connections.discard(self)
        state.stats.open_connections -= 1
        state.caps.release(self._guest, self._identity)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            if self._linger_left > 0:
                self._discard(len(data))
            return
        if data.count(_HEAD_END) > 1:
            self._feed_pipelined(data)
            return
        if self._in_head:
            if not self._unparsed:
                self._head_tick = self._state.tick
            self._unparsed += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserInvalidMethodError:
            self._fail(405)
        except httptools.HttpParserUpgrade:
            # No WebSocket or CONNECT here: a request already answered just ends the
            # connection; one cut short by the upgrade is refused.
            if self._in_head:
                self._close()
            else:
                self._fail(400)
        except httptools.HttpParserError:
            self._fail(self._reject)
        else:
            if self._in_head and self._unparsed > MAX_HEAD_BYTES:
                self._fail(431)

    def _feed_pipelined(self, data: bytes) -> None:
        """Parse a read holding several requests one head at a time, and keep the rest
        unparsed once the output is over its ceiling (pause_writing): a guest that asks
        without reading gets no more answers queued than the ceiling and one piece's
        (a piece completes at most a body before its head and the request it ends).
        Each piece holds one head end at most, so data_received parses it at once."""
        start, end = 0, len(data)
        while start < end:
            cut = data.find(_HEAD_END, start)
            cut = end if cut < 0 else cut + len(_HEAD_END)
            self.data_received(data[start:cut])
            start = cut
            if self._closing:
                return
            if (self._write_paused or self._waiting is not None) and start < end:
                self._held = data[start:]
                return

    def eof_received(self) -> bool | None:
        return None  # close our side too; in-flight responses are already written

    def pause_writing(self) -> None:
        self._write_paused = True
        self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._unsent_tick = -1  # the peer took replies: the send timeout starts again
        if self._waiting is None:
            self._continue_reading()

    def _continue_reading(self) -> None:
        """Read again after a pause: first the pipelined input held meanwhile."""
        if self._closing:
            return
        held, self._held = self._held, b""
        if held:
            self._feed_pipelined(held)
            if self._write_paused or self._waiting is not None or self._closing:
                return
        self._transport.resume_reading()

    # -- httptools callbacks --------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        self._url = self._url + url if self._url else url
        if len(self._url) > http.MAX_URL_BYTES:
            raise self._abort(414)

    def on_header(self, name: bytes, value: bytes) -> None:
        length = len(name)
        self._header_bytes = size = self._header_bytes + length + len(value)
        if size > http.MAX_HEADER_BYTES:
            raise self._abort(431)
        if length in _INTERESTING_LENGTHS:
            name = name.lower()
            if name == TOKEN_HEADER:
                self._token = value
            elif name == TTL_REQUEST_HEADER:
                self._ttl = value
            elif name == _FORWARDED_HEADER:
                self._forwarded = True
            elif name == _FLAVOR_HEADER:
                self._flavor = value
            elif name in _CONNECTION_HEADERS:
                self._connection_header = True
            else:
                return
            self._extras = True

    def on_body(self, body: bytes) -> None:
        self._in_head = False
        if len(self._body) + len(body) > http.MAX_BODY_BYTES:
            raise self._abort(413)
        self._body += body
        self._extras = True

    def on_message_complete(self) -> None:
        self._in_head = True
        self._unparsed = 0
        if self._closing:
            return
        state = self._state
        self._active_tick = state.tick
        access_log = state.access_log
        started = perf_counter_ns() if access_log is not None else 0
        try:
            self._respond()
        except Exception as exc:
            state.events.error("server-error", self._guest,
                               f"answering {self._url[:80]!r} failed: answered 500", exc)
            raise self._abort(500) from None
        if access_log is not None and self._waiting is None:
            access_log.record(self._guest, self._prepared, self._parser, self._url,
                              self._last_status, (perf_counter_ns() - started) // 1000)
        self._reset_request()

    # -- answering ------------------------------------------------------------------

    def _respond(self) -> None:
        if not self._bucket.take():
            self._throttle()
            return
        parser = self._parser
        method = parser.get_method()
        is_token = False
        refusal = self._judge(self._store.snapshot())
        if refusal is not None:
            reply = refusal
        elif self._flavor is not None and method in (_GET, _HEAD):
            reply = self._dispatcher.gce(self._prepared, self._url, self._flavor,
                                         self._forwarded)
        elif method == _GET:
            reply = self._dispatcher.get(self._prepared, self._url, self._token)
        else:
            reply, is_token = self._dispatcher.respond(
                self._prepared, method, self._url, self._token, self._ttl,
                self._forwarded, self._body)
        if reply.__class__ is Wait:
            self._hold(reply, method)
            return
        self._send(reply, method, is_token, parser.should_keep_alive(),
                   self._connection_header and parser.get_http_version() == _HTTP10)

    def _send(self, reply: http.Reply, method: bytes, is_token: bool, keep_alive: bool,
              version10: bool) -> None:
        """Write `reply`; `version10`: an HTTP/1.0 request with a Connection header."""
        self._responses[reply.status] += 1
        self._last_status = reply.status
        self._requests_left -= 1
        if keep_alive and (self._requests_left <= 0
                           or self._state.tick >= self._expires_tick):
            keep_alive = False  # this reply says Connection: close, as nginx does
            self._state.stats.keepalive_limit_closed += 1
        http10 = keep_alive and version10
        if keep_alive and not http10 and method != _HEAD:
            data = reply.keep_alive  # the common case, prebuilt
        else:
            data = reply.render(head_only=method == _HEAD, close=not keep_alive, http10=http10)
        transport = self._transport
        if is_token:
            if not self._ttl_lowered:
                self._ttl_lowered = rawsock.lower_ttl(self._state.raw_calls,
                                                       self._descriptor(),
                                                       self._state.token_hop_limit)
        elif self._ttl_lowered and rawsock.restore_if_sent(
                transport, self._state.raw_calls, self._descriptor()):
            self._ttl_lowered = False
        if not keep_alive:
            rawsock.write_last(transport, self._state.raw_calls, self._descriptor(), data)
            self._close()
            return
        transport.write(data)

    # -- long polls -------------------------------------------------------------------

    def _hold(self, wait: Wait, method: bytes) -> None:
        """Keep this request for later (GCE `wait_for_change`): read nothing more meanwhile."""
        parser = self._parser
        self._waiting = (wait, method, parser.should_keep_alive(),
                         self._connection_header and parser.get_http_version() == _HTTP10,
                         time.monotonic() + wait.timeout_s)
        self._transport.pause_reading()
        self._state.long_polls.hold(self)

    def recheck(self, snapshot: object, now: float) -> bool:
        """Answer the held request if its value changed or its time is up (True then)."""
        if self._waiting is None or self._closing:
            self._waiting = None
            return True
        wait, method, keep_alive, version10, deadline = self._waiting
        self._active_tick = self._state.tick  # a held request is not an idle connection
        reply = self._judge(snapshot)
        if reply is None:
            reply = self._dispatcher.gce_again(self._prepared, wait)
            if getattr(reply, "etag", None) == wait.etag and now < deadline:
                return False
        self._waiting = None
        self._send(reply, method, False, keep_alive, version10)
        if not self._write_paused:
            self._continue_reading()
        return True

    def _descriptor(self) -> int:
        """The connection's descriptor for `rawsock` calls (-1 once closed)."""
        return -1 if self._transport.is_closing() else self._fd

    def _abort(self, status: int) -> _Reject:
        self._reject = status
        return _Reject(status)

    def _throttle(self) -> None:
        state = self._state
        state.stats.requests_throttled += 1
        state.events.warn("throttled", self._guest,
                          f"requests over {state.limits.request_rate:g}/s "
                          f"(burst {state.limits.request_burst}): answered 429")
        self._fail(429)

    def _judge(self, snapshot: object) -> http.Reply | None:
        """Bring this connection to `snapshot`: None when its guest may be answered from
        it, else the refusal (a MAC locked elsewhere: 404; the store unreadable: 503).

        Whether a guest whose MAC is locked elsewhere is answered depends on the record
        it matches: judged again at every store change, so an open connection (or a held
        long poll) never keeps a permission its record no longer gives."""
        if snapshot is not self._snapshot:
            guest = self._guest
            self._forged = (guest is not None and guest.locked_elsewhere
                            and not _bound_to_this_port(snapshot, guest))
            if self._forged:
                self._snapshot = snapshot
            elif not self._find_record(snapshot):
                return STORE_UNAVAILABLE
        return self._refuse_forged() if self._forged else None

    def _find_record(self, snapshot) -> bool:
        """Bring this connection's view to `snapshot` (a new one); False when the store
        could not be read for it (locked by another process, damaged): answered 503,
        and the next request tries again."""
        try:
            self._prepared = self._state.views.prepared(self._guest, self._identity, snapshot)
        except (StoreUnavailable, StoreFault) as exc:
            self._state.events.warn("store-unavailable", self._guest, f"{exc}: answered 503")
            return False
        self._snapshot = snapshot
        return True

    def _refuse_forged(self) -> http.Reply:
        """A guest using a MAC locked to another port learns nothing: 404."""
        state = self._state
        state.stats.forgery_refused += 1
        state.events.warn("forged", self._guest,
                          "MAC is locked to another port that still exists: answered 404")
        return http.NOT_FOUND

    def _fail(self, status: int) -> None:
        """Answer a protocol error and close this connection only, lingering."""
        if self._closing:
            return
        reply = _REJECT_REPLIES.get(status, http.BAD_REQUEST)
        self._responses[reply.status] += 1
        transport = self._transport
        transport.write(reply.render(head_only=False, close=True, http10=False))
        self._linger()

    def _linger(self) -> None:
        """Send our FIN after the reply, then read and drop input for a bounded time.

        Closing with unread input makes the kernel send a reset, which can destroy
        the reply before the client reads it; so input that is still coming (a body
        too large, pipelined requests) is read and discarded until the client closes,
        `linger_bytes` arrived or `linger_s` passed.
        """
        self._closing = True
        self._held = b""
        limits = self._state.limits
        self._linger_left = limits.linger_bytes
        transport = self._transport
        try:
            transport.write_eof()
        except (OSError, RuntimeError, NotImplementedError):
            self._close()
            return
        if self._write_paused:
            transport.resume_reading()
        loop = self._state.loop
        if loop is not None:
            self._linger_timer = loop.call_later(limits.linger_s, self._end_linger)
        if self._linger_left <= 0:
            self._end_linger()

    def _discard(self, count: int) -> None:
        self._linger_left -= count
        if self._linger_left <= 0:
            self._end_linger()

    def _end_linger(self) -> None:
        self._linger_timer = None
        self._linger_left = 0
        self._transport.close()

    def _close(self) -> None:
        self._closing = True
        self._held = b""
        self._transport.close()

    def _reset(self) -> None:
        """Abort with a reset: what is queued for this peer is dropped, here and in the
        socket (SO_LINGER 0), whether or not the connection was already closing."""
        self._closing = True
        self._held = b""
        self._transport.reset()

    def close(self) -> None:
        """Close this connection (responder shutdown)."""
        if not self._closing:
            self._close()
        elif self._linger_left > 0:
            self._end_linger()

    def close_if_stale(self, tick: int) -> str | None:
        """Called by the sweeper at each tick: close a connection past a time limit,
        counted before it closes (a client that sees the close sees the count).

        Returns RESET_SEND_TIMEOUT (output waited unsent for the send timeout, closing
        or not: reset), CLOSED_HEADER_TIMEOUT (a request head started too long ago:
        408), CLOSED_IDLE (no request completed for the idle timeout) or None.
        """
        state = self._state
        unsent = self._transport.get_write_buffer_size()
        if unsent:
            if self._unsent_tick < 0 or unsent < self._unsent_bytes:
                self._unsent_tick = tick  # output began to wait, or the peer took some
            elif tick - self._unsent_tick >= state.send_ticks:
                state.events.warn("send-timeout", self._guest,
                                  "replies not taken in time (a full receive window): "
                                  "connection reset")
                state.stats.send_timeouts += 1
                self._reset()
                return self.RESET_SEND_TIMEOUT
        else:
            self._unsent_tick = -1
        self._unsent_bytes = unsent
        if self._closing:
            return None
        if self._in_head and self._unparsed and tick - self._head_tick >= state.header_ticks:
            state.events.warn("header-timeout", self._guest,
                              "request head not complete in time: answered 408")
            state.stats.header_timeouts += 1
            self._fail(408)
            return self.CLOSED_HEADER_TIMEOUT
        if tick - self._active_tick >= state.idle_ticks:
            state.stats.connections_idle_closed += 1
            self._close()
            return self.CLOSED_IDLE
        return None

    @property
    def guest(self):
        """The guest behind this connection (None if unknown)."""
        return self._guest


def _bound_to_this_port(snapshot, guest) -> bool:
    """A MAC locked to another port is still served where the VM manager bound its record.

    The lock goes to the port a MAC first asked from; a neighbour copying the MAC and
    asking first would otherwise lock the real guest out. A record bound to a port
    (`instance bind`, the libvirt hook) says where the guest is: on that port, it is
    answered; anywhere else the lock and the binding both refuse. Rare path: only guests
    whose MAC is locked elsewhere pay this lookup.
    """
    binding = snapshot.match(guest)
    return binding is not None and binding.port is not None
