"""A responder in its own process under a low RLIMIT_NOFILE, for the EMFILE test.

Run as `python -m tests.responder.limited_server STORE NOFILE`: prints the port, serves
every loopback client as one guest (caps raised so the descriptor budget is what
binds), prints its counters as JSON when it receives "stats\\n" on stdin.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import socket
import sys

import uvloop

from tests.responder.fakes import GUEST, make_store
from transparent_md.responder import Responder
from transparent_md.responder.limits import ResponderLimits

# Caps far above the descriptor limit, so only the fd budget stops accepting.
UNCAPPED = 1 << 20
# Descriptors kept free: the store, stdin/out/err, the listener, the connections' epoll.
TEST_FD_RESERVE = 16


async def serve(store_path: str) -> None:
    limits = ResponderLimits(max_conns_per_identity=UNCAPPED, max_conns_per_port=UNCAPPED,
                             fd_reserve=TEST_FD_RESERVE, accept_pause_s=0.1)
    store = make_store(store_path)
    responder = Responder(store, lambda peer: GUEST, limits=limits)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4096)
    await responder.start(sock)
    print(sock.getsockname()[1], flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        if line.strip() == b"stats":
            print(json.dumps(responder.stats.as_dict()), flush=True)


def main() -> None:
    store_path, nofile = sys.argv[1], int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    uvloop.run(serve(store_path))


if __name__ == "__main__":
    main()
