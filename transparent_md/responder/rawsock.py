"""System calls on a connection's descriptor without building a socket object.

A Python socket object validates its descriptor with a getsockname of its own, and
uvloop's transports add a TCP_NODELAY, a getsockname and a getpeername per connection;
the responder serves connections on their bare descriptors instead (`connections`),
and these are the calls Python has no descriptor-level form of: accept4 (a
non-blocking descriptor and the peer's address in one call), send with flags (the last
reply's MSG_MORE holds its segment for the FIN: no TCP_CORK setsockopt), shutdown and
setsockopt.

ctypes releases the GIL around a foreign call, so the buffers a call fills belong to
one object per event loop (one thread), never to the module.
"""

from __future__ import annotations

import ctypes
import errno
import socket

_libc = ctypes.CDLL(None, use_errno=True)
# No argtypes: ints and bytes convert natively, and argtypes checks cost ~0.3 us a call.
_accept4 = _libc.accept4
_send = _libc.send
_setsockopt = _libc.setsockopt
_shutdown = _libc.shutdown

# The rest of this reply and the FIN go in one segment (send(2), MSG_MORE); never a
# SIGPIPE from a peer that has gone (MSG_NOSIGNAL).
LAST_REPLY_FLAGS = socket.MSG_MORE | socket.MSG_NOSIGNAL
# Accepted descriptors never block (reads and writes are tried, never waited on) and
# are not inherited by anything the responder starts.
_ACCEPT_FLAGS = socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
# struct sockaddr_in6 is the larger of the two address families served.
_SOCKADDR_SIZE = 28
_NOTHING_WAITING = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR)


class RawSocketCalls:
    """send and setsockopt on descriptors, for one event loop's thread."""

    __slots__ = ("_int", "_int_ptr", "_linger_ptr")

    def __init__(self) -> None:
        self._int = ctypes.c_int(0)
        self._int_ptr = ctypes.pointer(self._int)
        # struct linger {l_onoff = 1, l_linger = 0}: close() resets the connection.
        self._linger_ptr = ctypes.pointer((ctypes.c_int * 2)(1, 0))

    @staticmethod
    def send_last(fd: int, data: bytes) -> int:
        """send() `data` as the connection's last bytes, held back for the FIN.

        Returns the bytes the socket took (0 when it took none or failed): the caller
        writes the rest through its transport.
        """
        return max(0, _send(fd, data, len(data), LAST_REPLY_FLAGS))

    @staticmethod
    def shutdown_write(fd: int) -> bool:
        """shutdown(fd, SHUT_WR): our FIN after what is already queued; True on success."""
        return _shutdown(fd, socket.SHUT_WR) == 0

    def reset_on_close(self, fd: int) -> bool:
        """SO_LINGER 0: the close() that follows sends a reset and drops whatever the
        socket still holds, instead of trying to deliver it; True on success."""
        return _setsockopt(fd, socket.SOL_SOCKET, socket.SO_LINGER, self._linger_ptr, 8) == 0

    def set_int_option(self, fd: int, level: int, option: int, value: int) -> bool:
        """setsockopt(fd, level, option, &value); True on success."""
        self._int.value = value
        return _setsockopt(fd, level, option, self._int_ptr, 4) == 0


class Acceptor:
    """accept4(2) on one listening socket, for one event loop's thread."""

    __slots__ = ("_fd", "_inet6", "_address", "_length", "_length_ptr")

    def __init__(self, sock: socket.socket) -> None:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            raise ValueError(f"cannot accept on a {sock.family!r} socket")
        self._fd = sock.fileno()
        self._inet6 = sock.family == socket.AF_INET6
        self._address = ctypes.create_string_buffer(_SOCKADDR_SIZE)
        self._length = ctypes.c_uint32(_SOCKADDR_SIZE)
        self._length_ptr = ctypes.pointer(self._length)

    def accept(self) -> tuple[int, tuple[str, int]] | None:
        """The next connection as (non-blocking descriptor, (peer IP, peer port)).

        None when no connection is waiting; any other failure raises OSError (EMFILE
        when out of descriptors, ECONNABORTED for a connection reset while queued).
        """
        self._length.value = _SOCKADDR_SIZE
        fd = _accept4(self._fd, self._address, self._length_ptr, _ACCEPT_FLAGS)
        if fd < 0:
            code = ctypes.get_errno()
            if code in _NOTHING_WAITING:
                return None
            raise OSError(code, f"accept4: {errno.errorcode.get(code, code)}")
        raw = self._address.raw
        port = (raw[2] << 8) | raw[3]
        if self._inet6:
            return fd, (socket.inet_ntop(socket.AF_INET6, raw[8:24]), port)
        return fd, (socket.inet_ntoa(raw[4:8]), port)
