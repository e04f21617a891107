"""Frames in and out of the raw datapath: parsed with dpkt, rewritten in a copy.

Pure functions of bytes: what a frame from a guest port is (a request to serve, an ARP
question or claim, something to refuse and why, or none of our business), the request
as the responder must see it, and a reply as the guest must see it. The rules are the
port program's (bpf/port_ingress.c, bpf/md_ingress.c): only untagged IPv4 with no
options and no fragmentation, TCP to port 80, from a unicast source, is served.

A rewrite changes two MACs, one address and two checksums: it writes those bytes in a
copy of the frame rather than rebuilding it from dpkt's objects, which cost most of a
frame's time. A frame whose checksum the kernel has yet to fill in (the sender's
checksum offload) gets its TCP checksum computed afresh with dpkt's helpers; any other
has both checksums adjusted for the one address that changed (RFC 1624), so a frame
that arrived with a wrong checksum still has a wrong one and the responder's kernel
drops it, as it would.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

import dpkt

from transparent_md.datapath.layout import Drop

METADATA_IP = socket.inet_aton("169.254.169.254")
METADATA_PORT = 80
ETH_HEADER_BYTES = 14
# At most this many VLAN tags are looked into (802.1ad outer + 802.1Q inner), as tc does.
MAX_TAGS = 2
VLAN_ETHERTYPES = frozenset({0x8100, 0x88A8, 0x9100})
_ARP_HRD_ETH, _ARP_PRO_IP = 1, 0x0800
_IP_MF, _IP_OFFSET = 0x2000, 0x1FFF
_TCP_SYN, _TCP_ACK, _TCP_RST, _TCP_FIN = 0x02, 0x10, 0x04, 0x01
# What dpkt may raise on a frame it cannot make sense of.
PARSE_ERRORS = (dpkt.Error, ValueError, IndexError, TypeError, AttributeError)


@dataclass(slots=True)
class Request:
    """IPv4 TCP to 169.254.169.254:80, to be given a shadow source."""

    frame: bytes
    ip_len: int       # the IPv4 total length (0: a segmentation-offload frame)
    guest_ip: bytes   # 4 bytes, network order
    guest_mac: bytes
    gw_mac: bytes     # the destination MAC the guest used (our replies come from it)
    opens: bool       # a SYN alone: the only packet that may take a slot


@dataclass(slots=True)
class Arp:
    """An IPv4-over-Ethernet ARP packet (any op); `tagged` if it came with a VLAN tag."""

    op: int
    sender_mac: bytes
    sender_ip: bytes
    target_ip: bytes
    tagged: bool = False


@dataclass(slots=True)
class Refused:
    """Aimed at us but never served: dropped and counted under `reason`."""

    reason: Drop


def unicast(address: bytes) -> bool:
    first = address[0]
    return first not in (0, 127) and first < 224


def _tags(frame: bytes) -> tuple[int, int, int]:
    """(number of VLAN tags, inner ethertype, offset of the L3 header), read off the bytes:
    dpkt takes at most two tags apart and does not say how many more there were."""
    tags, offset = 0, 12
    while len(frame) >= offset + 2:
        kind = int.from_bytes(frame[offset:offset + 2], "big")
        if kind not in VLAN_ETHERTYPES or tags > MAX_TAGS:
            return tags, kind, offset + 2
        tags += 1
        offset += 4
    return tags, -1, offset + 2


def read_port_frame(frame: bytes, tagged_by_nic: bool = False) -> Request | Arp | Refused | None:
    """What a frame a guest sent is to us; None: not ours (the bridge takes it).

    `tagged_by_nic`: the NIC took a VLAN tag off before we saw the frame."""
    if len(frame) < ETH_HEADER_BYTES:
        return None
    tags, kind, l3 = _tags(frame)
    tags += bool(tagged_by_nic)
    if tags > MAX_TAGS:
        return Refused(Drop.TOO_MANY_TAGS)
    if tags:
        return _tagged(frame[l3:], kind)
    if kind == dpkt.ethernet.ETH_TYPE_IP:
        return _ipv4(frame)
    if kind == dpkt.ethernet.ETH_TYPE_ARP:
        try:
            return _arp(dpkt.arp.ARP(frame[ETH_HEADER_BYTES:]), tagged=False)
        except PARSE_ERRORS:
            return None
    return None


def _tagged(l3: bytes, kind: int) -> Arp | Refused | None:
    """A tagged frame is never served: refused if aimed at us, else the bridge's."""
    if kind == dpkt.ethernet.ETH_TYPE_IP:
        return Refused(Drop.TAGGED_METADATA) if l3[16:20] == METADATA_IP else None
    if kind == dpkt.ethernet.ETH_TYPE_ARP:
        try:
            return _arp(dpkt.arp.ARP(l3), tagged=True)
        except PARSE_ERRORS:
            return None
    return None


def _ipv4(frame: bytes) -> Request | Refused | None:
    if frame[30:34] != METADATA_IP:
        return None  # not ours (or too short to say): the bridge takes it
    try:
        ip = dpkt.ip.IP(frame[ETH_HEADER_BYTES:])
    except PARSE_ERRORS:
        return Refused(Drop.UNSERVED)
    if (ip.v != 4 or ip.hl != 5 or ip.p != dpkt.ip.IP_PROTO_TCP
            or ip._flags_offset & (_IP_MF | _IP_OFFSET)):
        return Refused(Drop.UNSERVED)
    tcp = ip.data
    if not isinstance(tcp, dpkt.tcp.TCP) or tcp.dport != METADATA_PORT:
        return Refused(Drop.UNSERVED)
    if not unicast(ip.src):
        return Refused(Drop.BAD_SOURCE)
    flags = tcp.flags
    opens = bool(flags & _TCP_SYN) and not flags & (_TCP_ACK | _TCP_RST | _TCP_FIN)
    return Request(frame=frame, ip_len=ip.len, guest_ip=ip.src, guest_mac=frame[6:12],
                   gw_mac=frame[0:6], opens=opens)


def _arp(arp: object, tagged: bool) -> Arp | None:
    if (not isinstance(arp, dpkt.arp.ARP) or arp.hrd != _ARP_HRD_ETH or arp.pro != _ARP_PRO_IP
            or arp.hln != 6 or arp.pln != 4 or len(arp.spa) != 4 or len(arp.tpa) != 4):
        return None
    return Arp(op=arp.op, sender_mac=arp.sha, sender_ip=arp.spa, target_ip=arp.tpa,
               tagged=tagged)


def csum_replace(checksum: int, old: bytes, new: bytes) -> int:
    """A ones'-complement checksum after `old` (4 bytes) became `new` (RFC 1624, eqn. 3)."""
    total = ((~checksum & 0xFFFF) + (~int.from_bytes(old[:2], "big") & 0xFFFF)
             + (~int.from_bytes(old[2:4], "big") & 0xFFFF)
             + int.from_bytes(new[:2], "big") + int.from_bytes(new[2:4], "big"))
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


# Offsets in an untagged frame with a 20-byte IPv4 header (the only kind served).
_IP_SUM, _IP_SRC, _IP_DST, _L4, _TCP_SUM = 24, 26, 30, 34, 50


def _readdress(frame: bytes, ip_len: int, at: int, new: bytes, partial: bool) -> bytearray:
    """A copy of `frame` with the IPv4 address at offset `at` replaced and the checksums
    made right for it (the frame's Ethernet padding dropped)."""
    end = ETH_HEADER_BYTES + ip_len if ip_len else len(frame)
    out = bytearray(frame[:end])
    old = frame[at:at + 4]
    out[at:at + 4] = new
    ip_sum = csum_replace(int.from_bytes(frame[_IP_SUM:_IP_SUM + 2], "big"), old, new)
    out[_IP_SUM:_IP_SUM + 2] = ip_sum.to_bytes(2, "big")
    if partial:
        # The field holds only the pseudo-header's sum: compute the whole checksum.
        out[_TCP_SUM:_TCP_SUM + 2] = b"\0\0"
        segment = bytes(out[_L4:])
        pseudo = bytes(out[_IP_SRC:_L4]) + b"\0\x06" + len(segment).to_bytes(2, "big")
        total = dpkt.in_cksum_add(dpkt.in_cksum_add(0, pseudo), segment)
        out[_TCP_SUM:_TCP_SUM + 2] = dpkt.in_cksum_done(total).to_bytes(2, "big")
    else:
        tcp_sum = csum_replace(int.from_bytes(frame[_TCP_SUM:_TCP_SUM + 2], "big"), old, new)
        out[_TCP_SUM:_TCP_SUM + 2] = tcp_sum.to_bytes(2, "big")
    return out


def request_to_responder(request: Request, shadow_ip: bytes, responder_mac: bytes,
                         partial: bool) -> bytearray:
    """The request as the responder's kernel must get it: from the shadow address, to
    the responder's own MAC (any other would be dropped as not for this host)."""
    out = _readdress(request.frame, request.ip_len, _IP_SRC, shadow_ip, partial)
    out[0:6] = responder_mac
    return out


@dataclass(slots=True)
class Reply:
    frame: bytes
    ip_len: int
    shadow_ip: bytes


def read_reply(frame: bytes) -> Reply | None:
    """A frame from the responder's veth: a reply to a shadow address, or None."""
    if frame[12:14] != b"\x08\x00" or frame[26:30] != METADATA_IP:
        return None
    try:
        ip = dpkt.ip.IP(frame[ETH_HEADER_BYTES:])
    except PARSE_ERRORS:
        return None
    if ip.hl != 5 or not isinstance(ip.data, dpkt.tcp.TCP):
        return None
    return Reply(frame=frame, ip_len=ip.len, shadow_ip=ip.dst)


def reply_to_guest(reply: Reply, guest_ip: bytes, guest_mac: bytes, gw_mac: bytes,
                   partial: bool) -> bytearray:
    """The reply as the guest must get it: to its own address and MAC, from the MAC it
    sent its request to."""
    out = _readdress(reply.frame, reply.ip_len, _IP_DST, guest_ip, partial)
    out[0:6] = guest_mac
    out[6:12] = gw_mac
    return out


def arp_reply(question: Arp, answer_mac: bytes) -> bytes:
    """`question.target_ip is-at answer_mac`, to the asker."""
    answer = dpkt.arp.ARP(op=dpkt.arp.ARP_OP_REPLY, sha=answer_mac, spa=question.target_ip,
                          tha=question.sender_mac, tpa=question.sender_ip)
    return bytes(dpkt.ethernet.Ethernet(dst=question.sender_mac, src=answer_mac,
                                        type=dpkt.ethernet.ETH_TYPE_ARP, data=answer))
