"""In-process stand-ins for the event loop's side of a connection: bytes in, bytes out.

`FakeTransport` records what the protocol writes and whether it closed, shut down or
aborted; `FakeClient` feeds bytes to a real MetadataProtocol over it and hands back
what came out, so the protocol's state machine is tested without sockets or root.
Token replies set a socket option, so the transport carries a real (unconnected) TCP
socket for that.
"""

from __future__ import annotations

import asyncio
import re
import socket
from dataclasses import dataclass

from transparent_md.identity import Guest
from transparent_md.responder.limits import ResponderLimits
from transparent_md.responder.protocol import MetadataProtocol
from transparent_md.responder.state import ResponderState
from transparent_md.store import Store, open_store, parse_record

GUEST = Guest(bridge="br0", port="tap0", ifindex=10, mac="52:54:00:00:00:0a", ip="10.0.0.5")
# Same port, another address: another identity behind the same port.
GUEST_SECOND_IP = Guest(bridge="br0", port="tap0", ifindex=10, mac="52:54:00:00:00:0a",
                        ip="10.0.0.6")
STRICT = Guest(bridge="br0", port="tap2", ifindex=12, mac="52:54:00:00:00:0c", ip="10.0.0.7")
# GUEST's MAC and IP copied on another port while GUEST's port exists.
FORGER = Guest(bridge="br0", port="tap9", ifindex=19, mac=GUEST.mac, ip=GUEST.ip,
               locked_elsewhere=True)
PEERS = {"100.64.0.1": GUEST, "100.64.0.2": GUEST_SECOND_IP, "100.64.0.3": STRICT,
         "100.64.0.9": FORGER}
UNKNOWN_PEER = "100.64.0.200"

RECORD = {
    "instance_id": "i-aaaa", "mac": GUEST.mac, "bridge": "br0", "hostname": "alpha",
    "user_data": "#cloud-config\nhostname: alpha\n",
    "iam": {"role": "alpha-role", "access_key_id": "ASIAALPHA", "secret_access_key": "s3cr3t",
            "token": "tok", "expiration": "2099-01-01T00:00:00Z"},
}
RECORD_STRICT = {"instance_id": "i-strict", "mac": STRICT.mac, "imdsv2_required": True,
                 "hostname": "strict", "bridge": "br0"}


def make_store(path: str) -> Store:
    store = open_store(path)
    store.put_many([parse_record(r) for r in (RECORD, RECORD_STRICT)])
    return store


def make_state(store: Store, limits: ResponderLimits | None = None,
               idle_timeout: float = 30.0,
               loop: asyncio.AbstractEventLoop | None = None) -> ResponderState:
    return ResponderState(store, PEERS.get, 1, limits=limits, idle_timeout=idle_timeout,
                          loop=loop)


class FakeTransport(asyncio.Transport):
    """Records writes; close/abort/write_eof only set flags (the test reports loss)."""

    def __init__(self, peer: str) -> None:
        super().__init__()
        self.peer = peer
        self.out = bytearray()
        self.closed = False
        self.aborted = False
        self.eof_sent = False
        self.reading = True
        self.reset_sent = False
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # A peer that stops reading (stall()): writes wait in `unsent`, and the protocol
        # is told to pause past `high_water`, as a real transport does.
        self.protocol: asyncio.Protocol | None = None
        self.high_water: int | None = None
        self.unsent = bytearray()
        self.paused = False

    def get_extra_info(self, name: str, default=None):
        return {"peername": (self.peer, 40000)}.get(name, default)

    def fileno(self) -> int:
        return -1 if self.closed or self.aborted else self.sock.fileno()

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        assert not self.eof_sent, "write after write_eof"
        if self.high_water is None:
            self.out += data
            return
        self.unsent += data
        if not self.paused and len(self.unsent) > self.high_water:
            self.paused = True
            self.protocol.pause_writing()

    def stall(self, high_water: int) -> None:
        """From now on the peer takes nothing until drain()."""
        self.high_water = high_water

    def drain(self) -> None:
        """The peer takes everything waiting (the protocol may resume, write more)."""
        while self.unsent:
            self.out += self.unsent
            self.unsent.clear()
            if self.paused:
                self.paused = False
                self.protocol.resume_writing()

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        self.limits = (high, low)

    def reset(self) -> None:
        self.reset_sent = True
        self.unsent.clear()
        self.abort()

    def write_eof(self) -> None:
        self.eof_sent = True

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_write_buffer_size(self) -> int:
        return len(self.unsent)


class FakeClient:
    """One connection: a real MetadataProtocol over a FakeTransport."""

    def __init__(self, state: ResponderState, peer: str = "100.64.0.1") -> None:
        self.state = state
        self.transport = FakeTransport(peer)
        self.protocol = MetadataProtocol(state)
        self.transport.protocol = self.protocol
        self.lost = False
        self.protocol.connection_made(self.transport)
        self._settle()

    def send(self, data: bytes) -> bytes:
        """Feed `data` (as one read); return everything written in response."""
        self.protocol.data_received(data)
        return self.take()

    def take(self) -> bytes:
        out = bytes(self.transport.out)
        self.transport.out.clear()
        self._settle()
        return out

    def client_eof(self) -> None:
        """The client shut down its side (as after reading a last reply)."""
        if self.protocol.eof_received() is not True:
            self.transport.close()
        self._settle()

    def close(self) -> None:
        self.transport.close()
        self._settle()

    def _settle(self) -> None:
        """Report the loss of a closed transport, as the event loop would next."""
        if self.transport.closed and not self.lost:
            self.lost = True
            self.protocol.connection_lost(None)
            self.transport.sock.close()


def request(path: str, method: str = "GET", headers: dict[str, str] | None = None,
            body: bytes = b"", version: str = "HTTP/1.1") -> bytes:
    lines = [f"{method} {path} {version}", "Host: 169.254.169.254"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass
class Parsed:
    status: int
    headers: dict[str, str]
    body: bytes


def parse_responses(data: bytes, head_only: bool = False) -> list[Parsed]:
    """Split a byte stream of responses (Content-Length framed) into Parsed ones."""
    responses = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, f"incomplete response head: {data!r}"
        status_line, *lines = head.decode("latin-1").split("\r\n")
        match = re.fullmatch(r"HTTP/1\.1 (\d{3}) .+", status_line)
        assert match, status_line
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = 0 if head_only else int(headers["content-length"])
        assert len(rest) >= length, "incomplete body"
        responses.append(Parsed(int(match.group(1)), headers, rest[:length]))
        data = rest[length:]
    return responses


def one(data: bytes, head_only: bool = False) -> Parsed:
    responses = parse_responses(data, head_only)
    assert len(responses) == 1, responses
    return responses[0]
