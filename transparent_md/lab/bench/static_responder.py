"""The project's own Responder on any address, with identities from a fixed table.

The benchmark compares the tc path with the *same* responder reached without it: over
loopback, and behind a classic nft DNAT. Only the identity source differs (a dict
lookup of the peer address instead of the shadow-map read), so the difference in the
figures is the datapath's. Run as
`python -m transparent_md.lab.bench.static_responder --store PATH --listen HOST:PORT
--identities FILE`; FILE maps peer IP -> {bridge, port, ifindex, mac, ip}.
"""

from __future__ import annotations

import argparse
import json
import socket

from transparent_md.daemon.serving import serve_until_signal
from transparent_md.identity.guest import Guest

READY_LINE = "static-responder: ready"
# Same backlog as the daemon's listening socket, so accept queues behave alike.
BACKLOG = 4096


class StaticResolver:
    """Callable peer IP -> Guest from a fixed table (None: unknown, as in the daemon)."""

    def __init__(self, table: dict[str, Guest]) -> None:
        self.table = table

    def __call__(self, peer_ip: str) -> Guest | None:
        return self.table.get(peer_ip)

    def close(self) -> None:
        pass


def load_identities(path: str) -> dict[str, Guest]:
    with open(path) as f:
        raw = json.load(f)
    return {peer: Guest(**fields) for peer, fields in raw.items()}


def listening_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


def main() -> None:
    import uvloop

    from transparent_md.responder.limits import ResponderLimits
    from transparent_md.responder.server import Responder
    from transparent_md.store import open_store

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", required=True)
    parser.add_argument("--listen", required=True, metavar="HOST:PORT")
    parser.add_argument("--identities", required=True, metavar="FILE")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    sock = listening_socket(host, int(port))
    # The same limits the bench gives the daemon (runner.LOAD_GENERATOR_FLAGS).
    limits = ResponderLimits.from_flags(request_rate=0, keepalive_requests=0)
    responder = Responder(open_store(args.store), StaticResolver(load_identities(args.identities)),
                          token_hop_limit=1, limits=limits)

    uvloop.run(serve_until_signal(responder, sock, READY_LINE))


if __name__ == "__main__":
    main()
