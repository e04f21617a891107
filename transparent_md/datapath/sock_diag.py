"""Which peers the responder's TCP sockets talk to, read with inet_diag (sock_diag).

One NETLINK_SOCK_DIAG dump lists every IPv4 TCP socket of a network namespace in any
state: request socks (SYN_RECV), established, closing, TIME_WAIT. The netlink socket is
created inside the responder namespace and keeps it, so the caller can live anywhere.
Parsing is a fixed-offset read of each reply's destination address: nothing else is
needed, and a dump of tens of thousands of sockets must stay cheap.
"""

from __future__ import annotations

import socket
import struct

from transparent_md.datapath.responder_side import entered_netns

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
# Every TCP state, TCP_ESTABLISHED (1) .. TCP_NEW_SYN_RECV (12): bit n is state n.
ALL_TCP_STATES = 0xFFFFFFFF

_NLMSGHDR = struct.Struct("=IHHII")
# struct inet_diag_req_v2: family, protocol, ext, pad, states, then a zeroed sockid.
_REQ_V2 = struct.Struct("=BBBxI48x")
# In struct inet_diag_msg: family, state, timer, retrans (4), sport, dport (4), src (16),
# then the destination address: the peer, for the responder's sockets.
_MSG_DST_OFFSET = 24
_MSG_MIN_LEN = 72
# Room for a few hundred replies per read.
_RECV_BYTES = 1 << 17


class TcpPeers:
    """A reusable sock_diag socket bound to one namespace (None: the current one)."""

    def __init__(self, netns_name: str | None) -> None:
        with entered_netns(netns_name):
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
        self._seq = 0

    def peers(self) -> set[int]:
        """Remote IPv4 addresses (host-order ints) of every TCP socket, any state."""
        self._seq += 1
        request = _REQ_V2.pack(socket.AF_INET, socket.IPPROTO_TCP, 0, ALL_TCP_STATES)
        header = _NLMSGHDR.pack(_NLMSGHDR.size + len(request), SOCK_DIAG_BY_FAMILY,
                                NLM_F_REQUEST | NLM_F_DUMP, self._seq, 0)
        self._sock.send(header + request)
        found: set[int] = set()
        while True:
            data = self._sock.recv(_RECV_BYTES)
            offset = 0
            while offset + _NLMSGHDR.size <= len(data):
                length, kind, _, seq, _ = _NLMSGHDR.unpack_from(data, offset)
                if length < _NLMSGHDR.size:
                    raise OSError("sock_diag: malformed netlink reply")
                if seq == self._seq:
                    if kind == NLMSG_DONE:
                        return found
                    if kind == NLMSG_ERROR:
                        (code,) = struct.unpack_from("=i", data, offset + _NLMSGHDR.size)
                        raise OSError(-code, f"sock_diag dump failed: errno {-code}")
                    body = offset + _NLMSGHDR.size
                    if kind == SOCK_DIAG_BY_FAMILY and length - _NLMSGHDR.size >= _MSG_MIN_LEN:
                        dst = body + _MSG_DST_OFFSET
                        found.add(int.from_bytes(data[dst:dst + 4], "big"))
                offset += (length + 3) & ~3

    def close(self) -> None:
        self._sock.close()
