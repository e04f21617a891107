"""The connection layer over real loopback sockets: accept4, the epoll, the transport.

Each test runs a Listener with a recording protocol on uvloop and talks to it with
plain blocking sockets, then looks at what the server side saw and, through
/proc/self/fdinfo, at which descriptors the connections' epoll held.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import uvloop

from transparent_md.responder.accepting import Listener
from transparent_md.responder.connections import HIGH_WATER, Connections

TIMEOUT_S = 10


class Recorder(asyncio.Protocol):
    """Writes back what `reply` makes of each read; remembers every callback."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.transport = None
        self.received = b""
        self.events: list[str] = []
        self.lost = threading.Event()
        self.lost_exc: Exception | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.events.append("made")
        self.server.protocols.append(self)
        self.server.on_made(self)

    def data_received(self, data: bytes) -> None:
        self.received += data
        self.events.append("data")
        self.server.on_data(self, data)

    def eof_received(self):
        self.events.append("eof")
        return None

    def pause_writing(self) -> None:
        self.events.append("pause_writing")

    def resume_writing(self) -> None:
        self.events.append("resume_writing")

    def connection_lost(self, exc) -> None:
        self.events.append("lost")
        self.lost_exc = exc
        self.lost.set()


class Server:
    """A Listener on 127.0.0.1 (or ::1) in a uvloop thread."""

    def __init__(self, on_data: Callable[[Recorder, bytes], None],
                 on_made: Callable[[Recorder], None] = lambda p: None) -> None:
        self.on_data = on_data
        self.on_made = on_made
        self.protocols: list[Recorder] = []
        self.loop = uvloop.new_event_loop()
        self.connections: Connections | None = None
        self.listener: Listener | None = None

    def call(self, fn: Callable[[], object]) -> object:
        """Run `fn` on the loop's thread and return its result."""
        done = threading.Event()
        box = {}

        def run() -> None:
            box["value"] = fn()
            done.set()

        self.loop.call_soon_threadsafe(run)
        assert done.wait(TIMEOUT_S)
        return box["value"]

    def epoll_targets(self) -> set[int]:
        """Descriptors the connections' epoll watches, as the kernel reports them."""
        epfd = self.connections._epoll.fileno()
        text = Path(f"/proc/self/fdinfo/{epfd}").read_text()
        return {int(line.split()[1]) for line in text.splitlines()
                if line.startswith("tfd:")}


@contextmanager
def serving(on_data, on_made=lambda p: None, family=socket.AF_INET,
            sndbuf: int | None = None) -> Iterator[tuple]:
    server = Server(on_data, on_made)
    sock = socket.socket(family, socket.SOCK_STREAM)
    if sndbuf is not None:  # accepted sockets inherit it (and no autotuning)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    sock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
    sock.listen(64)
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(server.loop)
        server.connections = Connections(server.loop)
        server.listener = Listener(server.loop, sock, lambda: Recorder(server),
                                   server.connections, 1.0, lambda: len(server.connections),
                                   1000, lambda: None)
        server.loop.run_until_complete(server.listener.start())
        started.set()
        server.loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(TIMEOUT_S)
    try:
        yield server, sock.getsockname()[:2]
    finally:
        def stop() -> None:
            server.listener.close()
            server.connections.close()
            server.loop.stop()
        server.loop.call_soon_threadsafe(stop)
        thread.join(TIMEOUT_S)
        server.loop.close()
        sock.close()


def _echo_and_close(protocol: Recorder, data: bytes) -> None:
    protocol.transport.write(b"got " + data)
    protocol.transport.close()


def _echo(protocol: Recorder, data: bytes) -> None:
    protocol.transport.write(b"got " + data)


def _read_all(client: socket.socket) -> bytes:
    client.settimeout(TIMEOUT_S)
    out = b""
    while chunk := client.recv(65536):
        out += chunk
    return out


def test_a_request_sent_with_the_connection_is_answered_without_joining_the_epoll():
    """TCP_DEFER_ACCEPT: accepted with its data, answered and closed in one pass."""
    with serving(_echo_and_close) as (server, address):
        client = socket.create_connection(address, timeout=TIMEOUT_S)
        client.sendall(b"hello")
        assert _read_all(client) == b"got hello"
        client.close()
        protocol = server.protocols[0]
        assert protocol.lost.wait(TIMEOUT_S)
        assert protocol.events == ["made", "data", "lost"]
        assert server.call(server.epoll_targets) == set()
        assert len(server.connections) == 0


def test_a_connection_that_stays_open_is_watched_until_it_closes():
    """Keep-alive requests stay on this module's transport and epoll to the end."""
    with serving(_echo) as (server, address):
        client = socket.create_connection(address, timeout=TIMEOUT_S)
        client.sendall(b"one")
        assert client.recv(100) == b"got one"
        protocol = server.protocols[0]
        transport = protocol.transport
        fd = server.call(lambda: transport.fileno())
        assert server.call(server.epoll_targets) == {fd}
        for word in (b"two", b"three", b"four"):
            client.sendall(word)
            assert client.recv(100) == b"got " + word
        assert protocol.transport is transport
        assert server.call(server.epoll_targets) == {fd}
        client.shutdown(socket.SHUT_WR)  # EOF: the protocol's eof_received says close
        assert client.recv(100) == b""
        protocol = server.protocols[0]
        assert protocol.lost.wait(TIMEOUT_S)
        assert protocol.events == ["made", "data", "data", "data", "data", "eof", "lost"]
        assert protocol.lost_exc is None
        assert server.call(server.epoll_targets) == set()
        client.close()


def test_a_connection_that_asks_once_and_closes_is_lost_once():
    """cloud-init's pattern: keep-alive by default, one request, then the client closes."""
    with serving(_echo) as (server, address):
        for _ in range(3):
            client = socket.create_connection(address, timeout=TIMEOUT_S)
            client.sendall(b"one")
            assert client.recv(100) == b"got one"
            client.close()
        for protocol in server.protocols:
            assert protocol.lost.wait(TIMEOUT_S)
            assert protocol.events == ["made", "data", "eof", "lost"]


def test_a_silent_client_is_accepted_after_the_deferral_and_can_then_talk():
    """A client that sends nothing is not left unaccepted for ever (idle timeouts apply)."""
    made = threading.Event()
    with serving(_echo, on_made=lambda p: made.set()) as (server, address):
        client = socket.create_connection(address, timeout=TIMEOUT_S)
        assert made.wait(TIMEOUT_S)
        client.sendall(b"late")
        assert client.recv(100) == b"got late"
        client.close()


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_the_peer_comes_from_accept(family):
    with serving(_echo_and_close, family=family) as (server, address):
        client = socket.socket(family, socket.SOCK_STREAM)
        client.settimeout(TIMEOUT_S)
        client.connect(address)
        client.sendall(b"x")
        assert _read_all(client) == b"got x"
        peer = server.protocols[0].transport.get_extra_info("peername")
        assert peer == client.getsockname()[:2]
        client.close()


def test_accepted_sockets_do_not_delay_small_segments():
    """TCP_NODELAY, set once on the listening socket, is inherited by every connection."""
    seen = {}

    def record(protocol: Recorder, data: bytes) -> None:
        fd = protocol.transport.fileno()
        with socket.socket(fileno=fd) as view:
            seen["nodelay"] = view.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            view.detach()
        _echo_and_close(protocol, data)

    with serving(record) as (server, address):
        client = socket.create_connection(address, timeout=TIMEOUT_S)
        client.sendall(b"x")
        assert _read_all(client) == b"got x"
        client.close()
    assert seen["nodelay"] == 1


def test_a_reply_larger_than_the_socket_takes_waits_and_close_waits_for_it():
    """Writes the socket does not take are buffered (pause/resume_writing), and
    close() sends all of them before the descriptor goes."""
    body = bytes(range(256)) * (8 * HIGH_WATER // 256)

    def big_reply(protocol: Recorder, data: bytes) -> None:
        protocol.transport.write(body)
        protocol.transport.close()

    with serving(big_reply, sndbuf=8192) as (server, address):
        client = socket.create_connection(address, timeout=TIMEOUT_S)
        client.sendall(b"go")
        assert _read_all(client) == body
        protocol = server.protocols[0]
        assert protocol.lost.wait(TIMEOUT_S)
        assert protocol.events[:3] == ["made", "data", "pause_writing"]
        assert "resume_writing" in protocol.events
        assert protocol.events[-1] == "lost"
        client.close()


def test_write_eof_sends_our_fin_and_keeps_reading():
    def half_close(protocol: Recorder, data: bytes) -> None:
        if data == b"first":
            protocol.transport.write(b"bye")
            protocol.transport.write_eof()

    with serving(half_close) as (server, address):
        client = socket.create_connection(address, timeout=TIMEOUT_S)
        client.sendall(b"first")
        assert _read_all(client) == b"bye"  # our FIN came after the reply
        client.sendall(b"still read")
        client.close()
        protocol = server.protocols[0]
        assert protocol.lost.wait(TIMEOUT_S)
        assert protocol.received == b"firststill read"


def test_a_reset_from_the_peer_reports_the_error_once():
    with serving(_echo) as (server, address):
        client = socket.create_connection(address, timeout=TIMEOUT_S)
        client.sendall(b"one")
        assert client.recv(100) == b"got one"
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        client.close()  # RST
        protocol = server.protocols[0]
        assert protocol.lost.wait(TIMEOUT_S)
        assert protocol.events.count("lost") == 1
        assert server.call(server.epoll_targets) == set()


def test_a_failing_protocol_loses_its_connection_only():
    def explode(protocol: Recorder, data: bytes) -> None:
        if data == b"boom":
            raise RuntimeError("protocol bug")
        _echo_and_close(protocol, data)

    with serving(explode) as (server, address):
        bad = socket.create_connection(address, timeout=TIMEOUT_S)
        bad.sendall(b"boom")
        assert _read_all(bad) == b""
        good = socket.create_connection(address, timeout=TIMEOUT_S)
        good.sendall(b"fine")
        assert _read_all(good) == b"got fine"
        # connection_lost comes at the end of the pass, which may have served `good` too
        assert server.protocols[0].lost.wait(TIMEOUT_S)
        assert isinstance(server.protocols[0].lost_exc, RuntimeError)
        bad.close()
        good.close()


def test_closed_connections_leave_no_reference_cycles(tmp_path):
    """A closed connection's transport, protocol and parser are freed by reference
    counting: cycles would pile up for the cyclic GC and pause some request for it.
    Only the responder's own objects are counted: other threads of the test process
    (a neighbouring test's leftovers, pytest) may make garbage of their own meanwhile."""
    import gc

    from tests.responder.conftest import start_responder

    for live in start_responder(str(tmp_path / "i.db"), idle_timeout=30.0):
        live.get("/latest/meta-data/instance-id")  # warm: routes memoised, views kept
        gc.collect()
        gc.disable()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            for _ in range(100):
                assert live.get("/latest/meta-data/instance-id").status == 200
            gc.collect()
            ours = [type(o).__qualname__ for o in gc.garbage
                    if type(o).__module__.startswith(("transparent_md", "uvloop", "httptools"))]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
        # Each connection left a protocol, transport and parser in a cycle before.
        assert len(ours) < 10, sorted(set(ours))


def test_a_keep_alive_reply_the_socket_does_not_take_waits_and_close_waits_for_it():
    """On a keep-alive connection, a queued reply drains in order and close() waits."""
    body = bytes(range(256)) * (8 * HIGH_WATER // 256)

    def big_on_third(protocol: Recorder, data: bytes) -> None:
        if data == b"big":
            protocol.transport.write(body)
            protocol.transport.close()
        else:
            protocol.transport.write(b"got " + data)

    with serving(big_on_third, sndbuf=8192) as (server, address):
        client = socket.create_connection(address, timeout=TIMEOUT_S)
        for word in (b"one", b"two"):
            client.sendall(word)
            assert client.recv(100) == b"got " + word
        client.sendall(b"big")
        assert _read_all(client) == body
        protocol = server.protocols[0]
        assert protocol.lost.wait(TIMEOUT_S)
        assert protocol.lost_exc is None
        client.close()
