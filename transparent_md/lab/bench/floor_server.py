"""The least a server on uvloop and httptools can cost: parse, answer one fixed body.

No routing, no identity, no limits, no store: each request is parsed by httptools and
answered with the same prebuilt bytes through uvloop's own transport. It runs beside
nginx in the router namespace, reached by the same guests over the same bridge, so its
row is the floor under any responder built on this stack: when this row costs as much
CPU per request as nginx, no work of ours can bring the tc path below nginx's.

For new connections the floor is uvloop's transport, which spends more system calls per
connection than the daemon's own accept path (`responder.connections`); that row shows
what the own path saves rather than a floor.

Run as `python -m transparent_md.lab.bench.floor_server --listen HOST:PORT --body TEXT`;
prints READY_LINE once it accepts connections.
"""

from __future__ import annotations

import asyncio
import signal
import socket

import httptools
import uvloop

from transparent_md.lab.bench.server_args import listen_and_body

READY_LINE = "floor-server: ready"
# The same backlog as the daemon's and nginx's listening sockets.
BACKLOG = 4096


def replies(body: bytes) -> tuple[bytes, bytes]:
    """(keep-alive reply, closing reply) carrying `body`: status, type and length, as
    nginx's `return 200` answers (less its Server and Date headers)."""
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
            % len(body))
    return head + b"\r\n" + body, head + b"Connection: close\r\n\r\n" + body


class FloorProtocol(asyncio.Protocol):
    """Parses with httptools and writes a fixed reply per complete request."""

    __slots__ = ("_keep_alive", "_close", "_parser", "_transport")

    def __init__(self, keep_alive: bytes, close: bytes) -> None:
        self._keep_alive = keep_alive
        self._close = close
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self._parser = None  # it holds this protocol's bound methods: break the cycle

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._transport.close()

    def on_message_complete(self) -> None:
        if self._parser.should_keep_alive():
            self._transport.write(self._keep_alive)
        else:
            self._transport.write(self._close)
            self._transport.close()


async def serve(host: str, port: int, body: bytes) -> None:
    keep_alive, close = replies(body)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(BACKLOG)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: FloorProtocol(keep_alive, close), sock=sock,
                                      backlog=BACKLOG)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(READY_LINE, flush=True)
    await stop.wait()
    server.close()


def main() -> None:
    host, port, body = listen_and_body(__doc__)
    uvloop.run(serve(host, port, body.encode()))


if __name__ == "__main__":
    main()
