"""Serve the admin API on a unix socket, from a thread with its own event loop.

The guest responder is one uvloop thread in the daemon's process; the admin API never
runs on it. It gets its own thread, its own asyncio loop and its own store connection,
and each request is a few milliseconds of parsing and one SQLite transaction, so a
guest request waits at most for a GIL slice (serving.GIL_SLICE_S), never for an
admin request. A change is committed before the reply is sent; the serving processes' store
loaders read it within milliseconds and their loops swap it in.

A store that takes writes from several threads at once (`concurrent_writes`: etcd,
whose writes are network round trips and commit together, see `EtcdStore._commit`) is
served by WRITE_THREADS threads, so concurrent clients' writes share transactions
instead of queueing one round trip after another.

The socket is created mode 0600 (root only: whoever can write records can hand any
guest any data), and removed on stop. A stale socket left by a crash is replaced; one a
live daemon still answers on is refused, so two daemons never share one path.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import os
import socket
import stat
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httptools

from transparent_md.api.routes import AdminApi, ApiError, Request, Response
from transparent_md.errors import UserError
from transparent_md.process import start_thread

log = logging.getLogger(__name__)

# Only the owner (root) may connect: the API writes what guests are told.
SOCKET_MODE = 0o600
# Parent directory of the socket when we create it; the socket's own mode guards it.
SOCKET_DIR_MODE = 0o755
# One record is at most ~16 KiB of user-data plus small fields; a batch PATCH of a few
# hundred records fits too. Larger bodies are refused before they are buffered.
MAX_BODY_BYTES = 8 * 1024 * 1024
# Request line and headers together; curl and HTTP libraries send well under 1 KiB.
MAX_HEAD_BYTES = 64 * 1024
# Connections the API keeps at once; an orchestrator needs a handful.
MAX_CONNECTIONS = 64
# An idle keep-alive connection is closed after this long.
IDLE_TIMEOUT_S = 60.0
# GET /v1/status waits this long for the daemon's status (a netlink dump per port).
STATUS_TIMEOUT_S = 10.0
# Requests handled at once for a store that takes concurrent writes: enough for an
# orchestrator's clients to fill an etcd transaction while the previous one commits.
WRITE_THREADS = 64
# How long start() waits for the thread to be serving, and stop() for it to end.
THREAD_START_TIMEOUT_S = 10.0
THREAD_STOP_TIMEOUT_S = 10.0
_REASONS = {200: "OK", 201: "Created", 204: "No Content", 400: "Bad Request",
            404: "Not Found", 405: "Method Not Allowed", 409: "Conflict",
            412: "Precondition Failed", 413: "Content Too Large",
            422: "Unprocessable Content", 431: "Request Header Fields Too Large",
            500: "Internal Server Error", 503: "Service Unavailable",
            507: "Insufficient Storage"}


def bind_socket(path: str) -> socket.socket:
    """A listening unix socket at `path`, mode 0600; UserError if a live one is there."""
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, mode=SOCKET_DIR_MODE, exist_ok=True)
        _clear_stale(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o777 & ~SOCKET_MODE)  # never visible with a looser mode
        try:
            sock.bind(path)
        finally:
            os.umask(old_umask)
        os.chmod(path, SOCKET_MODE)
        sock.listen(MAX_CONNECTIONS)
    except OSError as exc:
        raise UserError(f"cannot serve the admin API at {path}: {exc.strerror or exc} "
                        "(choose another path with --api PATH, or --api none)") from exc
    sock.setblocking(False)
    return sock


def in_use(path: str) -> bool:
    """Whether a live server answers on the unix socket at `path`."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


def _clear_stale(path: str) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise UserError(f"cannot serve the admin API at {path}: something that is not a "
                        "socket is there (choose another path with --api PATH)")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # left by a daemon that died; nobody listens
        return
    finally:
        probe.close()
    raise UserError(f"another process serves an admin API at {path} (another transparent-md "
                    "daemon with the same --name?); give this one --api PATH or --api none")


class AdminServer:
    """The admin API's thread: bind at construction (errors surface at startup), serve
    after start(), unlink the socket at stop()."""

    def __init__(self, path: str, open_store: Callable[[], object],
                 status: Callable[[], dict] | None = None) -> None:
        self.path = path
        self._open_store = open_store
        # The daemon's status is gathered with pyroute2's synchronous IPRoute, which runs
        # an asyncio loop of its own and cannot inside ours: it runs on a helper thread.
        self._status_thread = ThreadPoolExecutor(1, thread_name_prefix="admin-api-status")
        self._handlers: ThreadPoolExecutor | None = None
        self._status = status and self._status_elsewhere(status)
        self._sock = bind_socket(path)
        self._inode = os.stat(path).st_ino
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None

    def _status_elsewhere(self, status: Callable[[], dict]) -> Callable[[], dict]:
        def run() -> dict:
            return self._status_thread.submit(status).result(STATUS_TIMEOUT_S)

        return run

    def start(self) -> None:
        self._thread = start_thread("admin-api", self._run)
        self._ready.wait(THREAD_START_TIMEOUT_S)
        if self._failure is not None:
            raise self._failure
        log.info("admin API on %s", self.path)

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        store = None
        try:
            store = self._open_store()
            api = AdminApi(store, self._status)  # type: ignore[arg-type]
            if getattr(store, "concurrent_writes", False):
                self._handlers = ThreadPoolExecutor(WRITE_THREADS,
                                                    thread_name_prefix="admin-api-write")
            handlers = self._handlers
            server = loop.run_until_complete(loop.create_unix_server(
                lambda: AdminProtocol(api, handlers), sock=self._sock))
        except BaseException as exc:  # reported to start() in the daemon's thread
            self._failure = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            server.close()
            loop.run_until_complete(server.wait_closed())
            loop.close()
            if self._handlers is not None:
                self._handlers.shutdown(wait=True)
            store.close()  # type: ignore[attr-defined]

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(THREAD_STOP_TIMEOUT_S)
        self._status_thread.shutdown(wait=False)
        self._sock.close()
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == self._inode:  # still ours, not a successor's
                os.unlink(self.path)


class AdminProtocol(asyncio.Protocol):
    """HTTP/1.1 with keep-alive; each request is handled whole, in order (with
    `handlers`, on one of their threads, the connection not read meanwhile)."""

    def __init__(self, api: AdminApi, handlers: ThreadPoolExecutor | None = None) -> None:
        self.api = api
        self.handlers = handlers
        self._waiting: collections.deque[tuple[Request, bool]] = collections.deque()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.headers: dict[str, str] = {}
        self.body = bytearray()
        self.head_bytes = 0
        self.refusal: ApiError | None = None

    # -- connection ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle is not None:
            self._idle.cancel()

    def _arm_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        loop = asyncio.get_running_loop()
        self._idle = loop.call_later(IDLE_TIMEOUT_S, self._close)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self._arm_idle()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._send(ApiError(400, "protocol upgrades are not supported").response(), False)
        except httptools.HttpParserError as exc:
            self._send(ApiError(400, f"malformed HTTP request: {exc}").response(), False)

    # -- httptools callbacks --------------------------------------------------------

    def on_message_begin(self) -> None:
        self._reset()

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value))
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1").strip()

    def on_headers_complete(self) -> None:
        length = self.headers.get("content-length", "0")
        if length.isdigit() and int(length) > MAX_BODY_BYTES and self.refusal is None:
            self.refusal = _too_large()

    def on_body(self, body: bytes) -> None:
        if self.refusal is not None:
            return
        if len(self.body) + len(body) > MAX_BODY_BYTES:
            self.refusal = _too_large()
            self.body = bytearray()
            return
        self.body += body

    def on_message_complete(self) -> None:
        keep_alive = self.parser.should_keep_alive()
        if self.refusal is not None:
            self._send(self.refusal.response(), False)
            return
        request = Request(self.parser.get_method().decode("ascii"),
                          self.url.decode("latin-1"), self.headers, bytes(self.body))
        if self.handlers is None:
            self._send(self._handle(request), keep_alive)
            return
        self._waiting.append((request, keep_alive))
        if len(self._waiting) == 1:
            self._hand_on()

    def _hand_on(self) -> None:
        """Handle the oldest waiting request on a handler thread; the connection is not
        read meanwhile, and answers go out in the order the requests came."""
        assert self.transport is not None and self.handlers is not None
        self.transport.pause_reading()
        request, keep_alive = self._waiting[0]
        done = asyncio.get_running_loop().run_in_executor(self.handlers, self._handle, request)
        done.add_done_callback(lambda future: self._answered(future.result(), keep_alive))

    def _answered(self, response: Response, keep_alive: bool) -> None:
        self._waiting.popleft()
        self._send(response, keep_alive)
        if self.transport is None or self.transport.is_closing():
            return
        if self._waiting:
            self._hand_on()
        else:
            self.transport.resume_reading()

    def _handle(self, request: Request) -> Response:
        try:
            return self.api.handle(request)
        except Exception:  # a bug must cost one request, not the API thread
            log.exception("admin API: %s %s failed", request.method, request.target)
            return ApiError(500, "internal error; see the daemon's log").response()

    def _count_head(self, size: int) -> None:
        self.head_bytes += size
        if self.head_bytes > MAX_HEAD_BYTES and self.refusal is None:
            self.refusal = ApiError(431, f"request line and headers over {MAX_HEAD_BYTES} "
                                         "bytes")

    def _send(self, response: Response, keep_alive: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        body = response.encoded()
        reason = _REASONS.get(response.status, "Unknown")
        lines = [f"HTTP/1.1 {response.status} {reason}"]
        if body:
            lines.append("Content-Type: application/json")
        if response.status != 204:  # RFC 9110: a 204 carries no Content-Length
            lines.append(f"Content-Length: {len(body)}")
        lines += [f"{k}: {v}" for k, v in response.headers.items()]
        if not keep_alive:
            lines.append("Connection: close")
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        if not keep_alive:
            self.transport.close()


def _too_large() -> ApiError:
    return ApiError(413, f"request body over {MAX_BODY_BYTES} bytes; split a batch into "
                         "several requests")


__all__ = ["AdminServer", "MAX_BODY_BYTES", "SOCKET_MODE", "bind_socket", "in_use"]
