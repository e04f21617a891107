"""One guest TCP connection: httptools parses, the dispatcher answers, bytes go out.

Everything a request needs is prepared before it arrives, so the per-request work
is: parse, one 8-byte "did the store change" check, a dict lookup, one write.
Protocol errors answer 4xx and close only this connection.

This runs once per request at tens of thousands of requests a second, so it is written
for CPython: slots, shared objects bound once per connection, no callback the parser
would call for nothing, and nothing per request that only a rare request needs.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import httptools

from transparent_md.responder import hoplimit, http, lastreply
from transparent_md.responder.prepared import prepared_for
from transparent_md.responder.tokens import TOKEN_HEADER, TTL_REQUEST_HEADER

if TYPE_CHECKING:
    from transparent_md.responder.server import ResponderState

log = logging.getLogger(__name__)

_FORWARDED_HEADER = b"x-forwarded-for"
# Only these can make an HTTP/1.0 request keep-alive (llhttp honours both), so only a
# request carrying one needs the parser's version string (~170 ns to build).
_CONNECTION_HEADERS = frozenset({b"connection", b"proxy-connection"})
_HEAD = b"HEAD"
_HTTP10 = "1.0"
# Headers we care about, recognised by length first so most headers cost no lower().
_INTERESTING_LENGTHS = frozenset(
    len(name) for name in (TOKEN_HEADER, TTL_REQUEST_HEADER, _FORWARDED_HEADER,
                           *_CONNECTION_HEADERS))
# Bytes that may sit unparsed before a request line and headers complete: the header
# and URL limits plus slack, so a never-ending header line cannot grow the parser's
# buffer without bound.
MAX_HEAD_BYTES = http.MAX_HEADER_BYTES + http.MAX_URL_BYTES + 1024
# A reader that stops reading while pipelining requests gets closed past this much
# queued output rather than growing our memory.
MAX_QUEUED_OUTPUT = 1 << 20
# Sweeps (each idle_timeout / 2 apart) without a completed request before closing;
# three means a connection idles between idle_timeout and 1.5 x idle_timeout.
IDLE_SWEEPS = 3


class _Reject(Exception):
    """Raised inside a parser callback to abort with the status in `status`."""

    def __init__(self, status: int) -> None:
        self.status = status


_REJECT_REPLIES = {
    400: http.BAD_REQUEST, 405: http.METHOD_NOT_ALLOWED, 413: http.PAYLOAD_TOO_LARGE,
    414: http.URI_TOO_LONG, 431: http.HEADERS_TOO_LARGE, 500: http.SERVER_ERROR,
}


class MetadataProtocol(asyncio.Protocol):
    """asyncio Protocol and httptools callback target for one connection.

    The parser calls only the callbacks defined here: per-request state is reset when
    a message completes (not in an on_message_begin), and the end of the head is seen
    from the first body byte (not in an on_headers_complete).
    """

    __slots__ = (
        "_state", "_store", "_dispatcher", "_responses", "_parser", "_transport", "_guest",
        "_snapshot", "_prepared", "_closing", "_write_paused", "_ttl_lowered",
        "idle_sweeps", "_in_head", "_unparsed", "_url", "_header_bytes", "_token", "_ttl",
        "_forwarded", "_connection_header", "_body", "_reject",
    )

    def __init__(self, state: ResponderState) -> None:
        self._state = state
        self._store = state.store
        self._dispatcher = state.dispatcher
        self._responses = state.stats.responses
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._guest = None
        self._snapshot = None
        self._prepared = None
        self._closing = False
        self._write_paused = False
        # The socket whose TTL a token reply lowered, until it is restored.
        self._ttl_lowered = None
        self.idle_sweeps = 0
        self._in_head = True
        self._unparsed = 0
        self._reject = 400
        self._reset_request()

    def _reset_request(self) -> None:
        """Forget the request just answered (or start clean on a new connection)."""
        self._url = b""
        self._header_bytes = 0
        self._token: bytes | None = None
        self._ttl: bytes | None = None
        self._forwarded = False
        self._connection_header = False
        self._body = b""

    # -- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        state = self._state
        state.connections.add(self)
        stats = state.stats
        stats.connections_opened += 1
        stats.open_connections += 1
        peer = transport.get_extra_info("peername")
        try:
            self._guest = state.resolver(peer[0]) if peer else None
        except Exception:
            log.exception("resolving the guest behind %s failed", peer)
        if self._guest is None:
            stats.connections_unknown_guest += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._state.connections.discard(self)
        self._state.stats.open_connections -= 1
        # The parser holds bound methods of this protocol: break the cycle so both go
        # now, by reference counting, instead of piling up for the cyclic GC.
        self._parser = None

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        if self._in_head:
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

    def eof_received(self) -> bool | None:
        return None  # close our side too; in-flight responses are already written

    def pause_writing(self) -> None:
        self._write_paused = True
        self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if not self._closing:
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
            elif name in _CONNECTION_HEADERS:
                self._connection_header = True

    def on_body(self, body: bytes) -> None:
        self._in_head = False
        if len(self._body) + len(body) > http.MAX_BODY_BYTES:
            raise self._abort(413)
        self._body += body

    def on_message_complete(self) -> None:
        self._in_head = True
        self._unparsed = 0
        if self._closing:
            return
        self.idle_sweeps = 0
        try:
            self._respond()
        except Exception:
            log.exception("answering %r failed", self._url)
            raise self._abort(500) from None
        self._reset_request()

    # -- answering ------------------------------------------------------------------

    def _respond(self) -> None:
        snapshot = self._store.snapshot()
        if snapshot is not self._snapshot:
            self._snapshot = snapshot
            entry = self._store.entry_for(self._guest) if self._guest is not None else None
            self._prepared = prepared_for(entry, self._guest) if entry is not None else None
        parser = self._parser
        method = parser.get_method()
        reply, is_token = self._dispatcher.respond(
            self._prepared, method, self._url, self._token, self._ttl, self._forwarded,
            self._body)
        self._responses[reply.status] += 1
        keep_alive = parser.should_keep_alive()
        http10 = keep_alive and self._connection_header and (
            parser.get_http_version() == _HTTP10)
        if keep_alive and not http10 and method != _HEAD:
            data = reply.keep_alive  # the common case, prebuilt
        else:
            data = reply.render(head_only=method == _HEAD, close=not keep_alive, http10=http10)
        transport = self._transport
        if is_token:
            if self._ttl_lowered is None:
                self._ttl_lowered = hoplimit.lower_ttl(transport, self._state.token_hop_limit)
        elif self._ttl_lowered is not None and hoplimit.restore_if_sent(
                transport, self._ttl_lowered):
            self._ttl_lowered = None
        if not keep_alive:
            lastreply.cork(transport)
            transport.write(data)
            self._close()
            return
        transport.write(data)
        if self._write_paused and transport.get_write_buffer_size() > MAX_QUEUED_OUTPUT:
            self._close()

    def _abort(self, status: int) -> _Reject:
        self._reject = status
        return _Reject(status)

    def _fail(self, status: int) -> None:
        """Answer a protocol error and close this connection only."""
        if self._closing:
            return
        reply = _REJECT_REPLIES.get(status, http.BAD_REQUEST)
        self._responses[reply.status] += 1
        lastreply.cork(self._transport)
        self._transport.write(reply.render(head_only=False, close=True, http10=False))
        self._close()

    def _close(self) -> None:
        self._closing = True
        self._transport.close()

    def close(self) -> None:
        """Close this connection (responder shutdown)."""
        if not self._closing:
            self._close()

    def close_if_idle(self) -> bool:
        """Called by the sweeper; True if this connection was closed for idling."""
        self.idle_sweeps += 1
        if self.idle_sweeps >= IDLE_SWEEPS and not self._closing:
            self._close()
            return True
        return False
