"""Token replies leave with IP TTL = the hop limit, however late the kernel sends them.

The kernel stamps the TTL on a segment when it transmits it, not when write() hands
it the bytes: a reply may wait in the transport's buffer or in the socket's send queue
(a client pipelining without reading, a full receive window) and a lost segment is
retransmitted later. So the TTL is lowered before a token reply is written and raised
again only when nothing at all is queued: the transport's buffer is empty and the
kernel holds no unacknowledged byte. That is checked when the connection is about to
write its next plain reply; one that ends after its token keeps the low TTL to the end.

Both work on the connection's descriptor (`rawsock`): one setsockopt each, no socket
object, and nothing at all for the connections that never ask for a token.
"""

from __future__ import annotations

import asyncio
import fcntl
import socket
import struct
import termios

from transparent_md.responder.rawsock import RawSocketCalls

# IP_TTL = -1 puts the socket back on the route's (sysctl) default TTL, see ip(7):
# no getsockopt needed to remember the previous value.
DEFAULT_TTL = -1
# SIOCOUTQ: bytes in a TCP socket's send queue not yet acknowledged by the peer, see
# tcp(7); it shares its number with the terminal ioctl TIOCOUTQ.
SIOCOUTQ = termios.TIOCOUTQ
_INT = struct.Struct("i")


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
