"""System calls on a connection's descriptor without building a socket object.

uvloop hands out a connection's socket as a PseudoSocket, and every getpeername or
setsockopt on it builds a Python socket object for the call, which validates the
descriptor with a getsockname of its own: the peer lookup and the cork cost four
system calls and three objects per connection. Called on the bare descriptor through
libc they cost one call each, and the last reply's send can carry MSG_MORE, which
holds its segment for the FIN as TCP_CORK did, with no setsockopt at all.

ctypes releases the GIL around a foreign call, so the buffers a call fills belong to
one `RawSocketCalls` per event loop (one thread), never to the module.
"""

from __future__ import annotations

import ctypes
import socket

_libc = ctypes.CDLL(None, use_errno=True)
# No argtypes: ints and bytes convert natively, and argtypes checks cost ~0.3 us a call.
_getpeername = _libc.getpeername
_send = _libc.send
_setsockopt = _libc.setsockopt

# struct sockaddr_in: family (2 bytes, host order), port (2), IPv4 address (4), zeros (8).
_SOCKADDR_IN_SIZE = 16
_ADDR_START, _ADDR_END = 4, 8
_AF_INET = socket.AF_INET.to_bytes(2, "little")
# Room for a sockaddr_in6 (28 bytes), so an IPv6 peer is told apart, not truncated.
_SOCKADDR_BUFFER = 28
# The rest of this reply and the FIN go in one segment (send(2), MSG_MORE); never a
# SIGPIPE from a peer that has gone (MSG_NOSIGNAL).
LAST_REPLY_FLAGS = socket.MSG_MORE | socket.MSG_NOSIGNAL


class RawSocketCalls:
    """getpeername, send and setsockopt on descriptors, for one event loop's thread."""

    __slots__ = ("_addr", "_size", "_size_ptr", "_int", "_int_ptr")

    def __init__(self) -> None:
        self._addr = ctypes.create_string_buffer(_SOCKADDR_BUFFER)
        self._size = ctypes.c_uint32(_SOCKADDR_BUFFER)
        self._size_ptr = ctypes.pointer(self._size)
        self._int = ctypes.c_int(0)
        self._int_ptr = ctypes.pointer(self._int)

    def peer_ipv4(self, fd: int) -> str | None:
        """The IPv4 peer of connected socket `fd`; None if not IPv4 or not known."""
        self._size.value = _SOCKADDR_BUFFER
        if _getpeername(fd, self._addr, self._size_ptr) != 0:
            return None
        raw = self._addr.raw
        if self._size.value != _SOCKADDR_IN_SIZE or raw[:2] != _AF_INET:
            return None
        return socket.inet_ntoa(raw[_ADDR_START:_ADDR_END])

    @staticmethod
    def send_last(fd: int, data: bytes) -> int:
        """send() `data` as the connection's last bytes, held back for the FIN.

        Returns the bytes the socket took (0 when it took none or failed): the caller
        writes the rest through its transport.
        """
        return max(0, _send(fd, data, len(data), LAST_REPLY_FLAGS))

    def set_int_option(self, fd: int, level: int, option: int, value: int) -> bool:
        """setsockopt(fd, level, option, &value); True on success."""
        self._int.value = value
        return _setsockopt(fd, level, option, self._int_ptr, 4) == 0
