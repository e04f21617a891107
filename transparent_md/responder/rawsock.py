"""System calls on a connection's descriptor without building a socket object.

uvloop hands out a connection's socket as a PseudoSocket, and every setsockopt on it
builds a Python socket object for the call, which validates the descriptor with a
getsockname of its own: the TCP_CORK of a connection's last reply cost a getsockname
for the PseudoSocket, another for the socket object, and the setsockopt. Called on the
bare descriptor through libc, the last reply's send itself carries MSG_MORE, which
holds its segment for the FIN as TCP_CORK did: no setsockopt, no socket object.

ctypes releases the GIL around a foreign call, so the int a setsockopt reads belongs
to one `RawSocketCalls` per event loop (one thread), never to the module.
"""

from __future__ import annotations

import ctypes
import socket

_libc = ctypes.CDLL(None, use_errno=True)
# No argtypes: ints and bytes convert natively, and argtypes checks cost ~0.3 us a call.
_send = _libc.send
_setsockopt = _libc.setsockopt

# The rest of this reply and the FIN go in one segment (send(2), MSG_MORE); never a
# SIGPIPE from a peer that has gone (MSG_NOSIGNAL).
LAST_REPLY_FLAGS = socket.MSG_MORE | socket.MSG_NOSIGNAL


class RawSocketCalls:
    """send and setsockopt on descriptors, for one event loop's thread."""

    __slots__ = ("_int", "_int_ptr")

    def __init__(self) -> None:
        self._int = ctypes.c_int(0)
        self._int_ptr = ctypes.pointer(self._int)

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
