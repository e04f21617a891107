"""Calls on a connection's bare descriptor, without a socket object.

A Python socket object validates its descriptor with a getsockname of its own, and
uvloop's transports add a TCP_NODELAY, a getsockname and a getpeername per connection;
the responder serves connections on their bare descriptors instead (`connections`),
and these are the calls it makes on them:

- accept4 (`Acceptor`): a non-blocking descriptor and the peer's address in one call;
- the last reply (`write_last`): sent with MSG_MORE, so the kernel holds its (partial)
  segment until close() queues the FIN, which then rides on it: one packet instead of
  two, for no extra system call (TCP_CORK would cost a setsockopt per connection).
  close() follows within the same event-loop pass, and the kernel holds such data only
  briefly anyway;
- the token reply's hop limit (`lower_ttl`, `restore_if_sent`): the kernel stamps the
  TTL on a segment when it transmits it, not when write() hands it the bytes, and a
  reply may wait in the transport's buffer or the socket's send queue (a client
  pipelining without reading, a full receive window) or be retransmitted. So the TTL
  is lowered before a token reply is written and raised again only when nothing at
  all is queued, checked when the connection writes its next plain reply; one that
  ends after its token keeps the low TTL to the end;
- shutdown, and SO_LINGER 0 before a close that must reset (`reset_on_close`).

ctypes releases the GIL around a foreign call, so the buffers a call fills belong to
one object per event loop (one thread), never to the module.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import fcntl
import socket
import struct
import termios

_libc = ctypes.CDLL(None, use_errno=True)
# No argtypes: ints and bytes convert natively, and argtypes checks would cost time on
# every call.
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
# IP_TTL = -1 puts the socket back on the route's (sysctl) default TTL, see ip(7):
# no getsockopt needed to remember the previous value.
DEFAULT_TTL = -1
# SIOCOUTQ: bytes in a TCP socket's send queue not yet acknowledged by the peer, see
# tcp(7); it shares its number with the terminal ioctl TIOCOUTQ.
SIOCOUTQ = termios.TIOCOUTQ
_INT = struct.Struct("i")


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


def write_last(transport: asyncio.Transport, calls: RawSocketCalls, fd: int,
               data: bytes) -> None:
    """Write a connection's last reply (the caller closes it right after).

    Sent straight to the socket only when the transport holds nothing queued (so the
    bytes keep their order); whatever the socket does not take goes through the
    transport, as does everything when the descriptor is unknown.
    """
    if fd >= 0 and not transport.get_write_buffer_size():
        sent = calls.send_last(fd, data)
        if sent >= len(data):
            return
        data = data[sent:]
    transport.write(data)


def lower_ttl(calls: RawSocketCalls, fd: int, hop_limit: int) -> bool:
    """Set IP TTL = `hop_limit` on socket `fd`; True if it is now lowered."""
    return fd >= 0 and calls.set_int_option(fd, socket.IPPROTO_IP, socket.IP_TTL, hop_limit)


def restore_if_sent(transport: asyncio.Transport, calls: RawSocketCalls, fd: int) -> bool:
    """Restore the default TTL if every queued byte is out and acknowledged.

    Returns True when restored; False leaves the lowered TTL for a later check.
    """
    if transport.get_write_buffer_size():
        return False
    try:
        unacked = _INT.unpack(fcntl.ioctl(fd, SIOCOUTQ, bytes(_INT.size)))[0]
    except OSError:
        return False  # the socket is going away: nothing more leaves it anyway
    if unacked:
        return False
    return calls.set_int_option(fd, socket.IPPROTO_IP, socket.IP_TTL, DEFAULT_TTL)
