"""One AF_PACKET socket bound to one link by its ifindex (never by a name that could
change hands), filtered before it is bound so nothing unfiltered is ever queued."""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct

from transparent_md.datapath.raw import socket_filter

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_AUXDATA = 8
# tpacket_auxdata.tp_status bits: the checksum is still to be filled in (a guest's or
# the responder's checksum offload), and the NIC took a VLAN tag off.
TP_STATUS_CSUMNOTREADY = 0x8
TP_STATUS_VLAN_VALID = 0x10
_AUXDATA = struct.Struct("=IIIHHHH")
# Room for the largest frame a link may hand over (a GSO frame of a guest with
# segmentation offload on).
MAX_FRAME_BYTES = 65536
# Queued bytes (the kernel counts each frame's whole buffer) while the pump is busy: a
# guest port's burst of SYNs, and on the responder's veth every guest's replies at
# once. Set past net.core.rmem_max (SO_RCVBUFFORCE, as root): at its default the
# responder's queue overflowed in a 1,000-guest storm and lost SYN-ACKs.
PORT_RECEIVE_BYTES = 1 << 22
RESPONDER_RECEIVE_BYTES = 1 << 26
SO_RCVBUFFORCE = 33

_libc = ctypes.CDLL(None, use_errno=True)


class _SockaddrLl(ctypes.Structure):
    _fields_ = [("family", ctypes.c_uint16), ("protocol", ctypes.c_uint16),
                ("ifindex", ctypes.c_int32), ("hatype", ctypes.c_uint16),
                ("pkttype", ctypes.c_uint8), ("halen", ctypes.c_uint8),
                ("addr", ctypes.c_uint8 * 8)]


def open_bound(ifindex: int, program: list[tuple[int, int, int, int]],
               receive_bytes: int = PORT_RECEIVE_BYTES) -> socket.socket:
    """A non-blocking packet socket on `ifindex` seeing only what `program` accepts."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # protocol 0: sees nothing yet
    try:
        socket_filter.attach(sock, program)
        sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, receive_bytes)
        except PermissionError:  # without CAP_NET_ADMIN: as much as rmem_max allows
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_bytes)
        address = _SockaddrLl(family=socket.AF_PACKET, protocol=socket.htons(ETH_P_ALL),
                              ifindex=ifindex)
        if _libc.bind(sock.fileno(), ctypes.byref(address), ctypes.sizeof(address)) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"binding a packet socket to ifindex {ifindex}: "
                          f"{os.strerror(code)}")
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class Receiver:
    """Reads frames with their auxiliary data into one reused buffer."""

    def __init__(self) -> None:
        self._buffer = bytearray(MAX_FRAME_BYTES)
        self._ancillary = socket.CMSG_SPACE(_AUXDATA.size)

    def read(self, sock: socket.socket) -> tuple[bytes, int] | None:
        """(frame, tp_status) or None when nothing is queued (or the link went away)."""
        try:
            size, ancillary, _, _ = sock.recvmsg_into([self._buffer], self._ancillary)
        except BlockingIOError:
            return None
        except OSError as exc:
            if exc.errno in (errno.ENETDOWN, errno.ENXIO, errno.ENODEV):
                return None
            raise
        status = 0
        for level, kind, data in ancillary:
            if level == SOL_PACKET and kind == PACKET_AUXDATA and len(data) >= _AUXDATA.size:
                status = _AUXDATA.unpack_from(data)[0]
        return bytes(self._buffer[:size]), status
