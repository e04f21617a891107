"""The per-guest defences on a real loopback responder (no namespaces, no root).

Attacks through the datapath in namespaces are acceptance tests elsewhere; these check
what a real client sees: statuses rather than resets, caps closing at once, keep-alive
and header time limits, the rate limit, and the responder surviving EMFILE.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import select
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import wait_for
from tests.responder.conftest import start_responder
from tests.responder.fakes import GUEST, make_store
from tests.responder.http_client import Conn
from transparent_md.responder import Responder
from transparent_md.responder.limits import ResponderLimits

ID = "/latest/meta-data/instance-id"
# Big enough to fill any socket buffer, so the server must read while we write.
HUNDRED_KB_OF_HEADERS = "".join(f"X-Pad-{i:04d}: {'v' * 88}\r\n" for i in range(1000))
ONE_MIB = 1 << 20


# Small socket buffers on both ends, so a client cannot have sent a large request
# before the server answers it: as over a real link, the server's close would meet
# unread input and reset the connection.
SMALL_BUFFER = 4096


def live_with(tmp_path, **limits):
    return start_responder(str(tmp_path / "i.db"), idle_timeout=30.0,
                           listener_rcvbuf=SMALL_BUFFER, limits=ResponderLimits(**limits))


def small_buffered_socket(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
    sock.settimeout(20)
    sock.connect(("127.0.0.1", port))
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes; a reset after data keeps the data."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            raise AssertionError(f"connection reset; read so far {data[:80]!r}") from None
        if not chunk:
            return data
        data += chunk


@pytest.mark.parametrize(("payload", "status"), [
    ((f"GET {ID} HTTP/1.1\r\nHost: x\r\n" + HUNDRED_KB_OF_HEADERS + "\r\n").encode(), 431),
    (b"POST /openstack/latest/password HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
     % ONE_MIB + b"p" * ONE_MIB, 413),
])
def test_oversized_requests_get_their_status_not_a_reset(tmp_path, payload, status):
    for live in live_with(tmp_path):
        sock = small_buffered_socket(live.port)
        sock.sendall(payload)  # the server keeps reading (and dropping) after its reply
        reply = read_all(sock)  # without our FIN: the server's own FIN ends the reply
        assert reply.startswith(b"HTTP/1.1 %d " % status), reply[:80]
        assert b"Connection: close" in reply
        sock.close()
        assert live.get(ID).status == 200


def test_connections_over_the_identity_cap_are_closed_at_once(tmp_path):
    for live in live_with(tmp_path, max_conns_per_identity=4):
        held = [live.connect() for _ in range(4)]
        assert all(c.request("GET", ID).status == 200 for c in held)
        extra = live.socket()
        extra.settimeout(10)
        with contextlib.suppress(ConnectionResetError):  # aborted: a reset is expected
            assert extra.recv(1) == b""
        assert live.responder.stats.connections_refused["identity"] == 1
        assert live.get(ID, source="127.0.0.3").status == 200  # another guest: served
        held.pop().close()
        deadline = time.monotonic() + 10
        while live.responder.stats.open_connections >= 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert live.get(ID).status == 200  # a slot freed
        for conn in held:
            conn.close()


def test_keepalive_request_limit_seen_by_a_client(tmp_path):
    for live in live_with(tmp_path, keepalive_requests=5):
        conn = live.connect()
        replies = [conn.request("GET", ID) for _ in range(5)]
        assert [r.headers.get("connection") for r in replies] == [None] * 4 + ["close"]
        assert conn.at_eof()


def test_slowloris_gets_408_after_the_header_timeout(tmp_path):
    for live in start_responder(str(tmp_path / "i.db"), idle_timeout=30.0,
                                limits=ResponderLimits(header_timeout_s=0.3)):
        sock = live.socket()
        sock.settimeout(20)
        sock.sendall(b"GET /latest/meta-data/ HTTP/1.1\r\n")
        reply = b""
        for _ in range(200):  # a header byte every 50 ms: never completes
            try:
                sock.sendall(b"X")
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.05)
            if live.responder.stats.header_timeouts:
                break
        reply = read_all(sock)
        assert reply.startswith(b"HTTP/1.1 408 "), reply
        assert live.responder.stats.header_timeouts == 1


def test_over_the_request_rate_is_429_and_others_are_served(tmp_path):
    for live in live_with(tmp_path, request_rate=0.01, request_burst=10):
        statuses = []
        for _ in range(12):
            statuses.append(live.get(ID).status)
        assert statuses[:10] == [200] * 10
        assert statuses[10:] == [429, 429]
        conn = live.connect()
        conn.send("GET", ID)
        reply = conn.read()
        assert reply.status == 429 and reply.headers["retry-after"] == "1"
        assert live.get(ID, source="127.0.0.3").status == 200  # other identity


class _OutOfDescriptorsOnce:
    """accept4 failing once with EMFILE, as at the descriptor limit, then the real one."""

    def __init__(self, real) -> None:
        self.real = real
        self.failed = False

    def accept(self):
        if not self.failed:
            self.failed = True
            raise OSError(errno.EMFILE, "Too many open files")
        return self.real.accept()


def test_the_listener_pauses_when_accept_runs_out_of_descriptors(tmp_path):
    """The real limit is met in test_out_of_descriptors_...; this pins the pause itself."""
    for live in live_with(tmp_path, accept_pause_s=0.2):
        listener = live.responder.state.listener
        listener._acceptor = _OutOfDescriptorsOnce(listener._acceptor)
        assert live.get(ID).status == 200  # waits in the backlog, then accepted
        assert listener._acceptor.failed
        assert live.responder.stats.accept_paused == 1


def _stop_accepting(loop, fileno: int, done: threading.Event) -> None:
    loop.remove_reader(fileno)
    done.set()


def test_accepting_restarts_when_the_server_stops_without_a_word(tmp_path):
    """Accepting stopped by something else than a pause (simulated) is restarted."""
    for live in start_responder(str(tmp_path / "i.db"), idle_timeout=0.4):
        listener = live.responder.state.listener
        removed = threading.Event()
        live.loop.call_soon_threadsafe(_stop_accepting, live.loop, listener.fileno, removed)
        assert removed.wait(5)  # else the connection below may be accepted before it
        sock = live.socket()  # completed by the kernel, waits in the backlog
        sock.sendall(f"GET {ID} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        reply = Conn(sock).read()  # answered once the sweeper restarts accepting
        assert reply.status == 200
        assert live.responder.stats.accept_restarted == 1
        sock.close()


def test_out_of_descriptors_pauses_accepting_and_keeps_serving(tmp_path):
    """A responder with 96 descriptors and 150 clients: no traceback, no death."""
    nofile = 96
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.responder.limited_server", str(tmp_path / "i.db"),
         str(nofile)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        port = int(server.stdout.readline())
        clients = []
        for _ in range(150):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            clients.append(Conn(sock))
        def stats() -> dict:
            server.stdin.write(b"stats\n")
            server.stdin.flush()
            return json.loads(server.stdout.readline())

        # the first ones were accepted: they are served while accepting is paused
        assert clients[0].request("GET", ID).status == 200
        assert clients[10].request("GET", ID).status == 200
        # The server accepts the backlog at its own pace (slowly on a loaded machine):
        # it must have run out of descriptors before any client lets go of one.
        assert wait_for(lambda: stats()["accept_paused"] >= 1, 60)
        for conn in clients[:100]:
            conn.close()
        # the ones that waited in the backlog are accepted once descriptors free up
        assert clients[-1].request("GET", ID).status == 200
        paused = stats()["accept_paused"]
        for conn in clients[100:]:
            conn.close()
    finally:
        server.terminate()
        _, err = server.communicate(timeout=30)
    log = err.decode()
    assert "Traceback" not in log, log
    assert 1 <= log.count("accepting paused") <= paused, log


def test_asyncio_loop_default_listener_works_too(tmp_path):
    """Accepting and the connections' epoll rely only on the loop's add_reader."""
    async def main() -> int:
        store = make_store(str(tmp_path / "a.db"))
        responder = Responder(store, lambda peer: GUEST)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        listener = await responder.start(sock)
        listener.pause()
        reader, writer = await asyncio.open_connection(*sock.getsockname())
        writer.write(b"GET " + ID.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        writer.close()
        listener.close()
        responder.close()
        sock.close()
        store.close()
        return int(head.split()[1])

    assert asyncio.run(main()) == 200


def _unsent_bytes(live) -> int:
    """The largest output a connection of `live` holds unsent now (read on its loop)."""
    done = threading.Event()
    held = []

    def measure() -> None:
        held.append(max((c._transport.get_write_buffer_size()
                         for c in live.responder.state.connections), default=0))
        done.set()
    live.loop.call_soon_threadsafe(measure)
    assert done.wait(10)
    return held[0]


def _reset_by_server(sock: socket.socket, timeout: float) -> bool:
    """Wait for the server's reset without reading (POLLHUP/POLLERR: never a FIN alone,
    as this side never shuts down)."""
    poller = select.poll()
    poller.register(sock, 0)  # errors and hang-ups are reported whatever is asked
    return bool(poller.poll(timeout * 1000))


def test_a_guest_that_never_reads_holds_the_ceiling_then_is_reset(tmp_path):
    """Pipelined requests with a tiny receive window and no reading: the responder
    holds at most the ceiling and one reply for it, and resets it after the send
    timeout, though the client's window stays shut; others are served meanwhile."""
    ceiling, timeout = 4096, 0.5
    for live in start_responder(str(tmp_path / "i.db"), idle_timeout=30.0,
                                listener_sndbuf=SMALL_BUFFER,
                                limits=ResponderLimits(max_unsent_bytes=ceiling,
                                                       send_timeout_s=timeout,
                                                       request_rate=1e9, request_burst=10**9)):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
        sock.connect(("127.0.0.1", live.port))
        sock.setblocking(False)
        pipelined = f"GET {ID} HTTP/1.1\r\nHost: x\r\n\r\n".encode() * 2000
        with contextlib.suppress(BlockingIOError):
            sock.send(pipelined)
        started = time.monotonic()
        held = []
        while not _reset_by_server(sock, 0.05) and time.monotonic() - started < 10:
            held.append(_unsent_bytes(live))
            assert live.get(ID).status == 200
        elapsed = time.monotonic() - started
        sweep = live.responder.state.sweep_s
        assert elapsed < timeout + 2 * sweep + 1.0, elapsed
        assert max(held) >= ceiling // 2, held  # it did wait: the window was shut
        assert max(held) <= ceiling + 200, held  # the ceiling and one small reply
        with pytest.raises(ConnectionResetError):
            while sock.recv(65536):
                pass
        sock.close()
        assert live.responder.stats.send_timeouts == 1
        assert live.get(ID).status == 200
