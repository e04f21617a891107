"""Operator probes: connections that come from the responder's own address, never a guest.

Guests always reach the responder from a shadow address (the datapath rewrites them);
a connection from 169.254.169.254 itself was made on the responder's side: the daemon's
/healthz probe from inside the responder namespace, or the host's own request with
`--responder-netns none`. Such a connection is answered here, apart from the guests'
path: `GET /healthz` gets 200 `ok`, anything else 404, and nothing is counted in the
metrics or written to the access log, so probes never look like unknown guests.
"""

from __future__ import annotations

import asyncio

PROBE_SOURCE = "169.254.169.254"
PROBE_PATH = b"/healthz"
# A probe's request is one short line; more than this is not a probe worth reading.
MAX_PROBE_REQUEST = 4096
_OK = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n"
       b"Connection: close\r\n\r\nok\n")
_NOT_FOUND = (b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n"
              b"Connection: close\r\n\r\n")


def is_operator_probe(peer_ip: str) -> bool:
    """Whether a connection from `peer_ip` comes from the responder's side, not a guest."""
    return peer_ip == PROBE_SOURCE


class OperatorProbe(asyncio.Protocol):
    """Answers one request of an operator probe, then closes."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._head = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._head += data
        if b"\r\n\r\n" not in self._head:
            if len(self._head) > MAX_PROBE_REQUEST:
                self._transport.close()
            return
        words = self._head.split(b"\r\n", 1)[0].split()
        healthz = len(words) >= 2 and words[0] in (b"GET", b"HEAD") and words[1] == PROBE_PATH
        self._transport.write(_OK if healthz else _NOT_FOUND)
        self._transport.close()

    def eof_received(self) -> bool | None:
        return None
