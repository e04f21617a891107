"""The Listener serves with the backlog its socket's owner chose, not asyncio's 100.

The responder once served through create_server(), which calls listen() again on what
it serves; left to its default that shrank the daemon's 4096 to 100 and a 1,000-guest
boot storm overflowed it. The Listener accepts for itself now and never re-listens.
"""

from __future__ import annotations

import asyncio
import socket

import uvloop

from transparent_md.responder.accepting import Listener, listen_backlog
from transparent_md.responder.connections import Connections

OWNER_BACKLOG = 4096
ASYNCIO_DEFAULT_BACKLOG = 100


def _serve_and_read_backlog(sock: socket.socket) -> int:
    async def main() -> int:
        loop = asyncio.get_running_loop()
        connections = Connections(loop)
        listener = Listener(loop, sock, asyncio.Protocol, connections, pause_s=1.0,
                            open_connections=lambda: 0, budget=1000, on_pause=lambda: None)
        await listener.start()
        try:
            return listen_backlog(sock)
        finally:
            listener.close()
            connections.close()

    return uvloop.run(main())


def test_serving_keeps_the_owners_backlog():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(OWNER_BACKLOG)
        assert listen_backlog(sock) == OWNER_BACKLOG
        assert _serve_and_read_backlog(sock) == OWNER_BACKLOG


def test_positive_control_create_server_default_shrinks_it():
    """Without passing the backlog, create_server() re-listens with 100."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(OWNER_BACKLOG)

        async def main() -> None:
            server = await asyncio.get_running_loop().create_server(
                asyncio.Protocol, sock=sock.dup())
            server.close()

        uvloop.run(main())
        assert listen_backlog(sock) == ASYNCIO_DEFAULT_BACKLOG
