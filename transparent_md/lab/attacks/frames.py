"""Ethernet frames built byte by byte: TCP segments to the metadata address and ARP,
optionally inside VLAN tags.

A flood must not spend its time building packets, so frames are made once with
`struct` (checksums computed here, as a NIC without offload would) and then sent
over and over. Nothing here touches a socket: it is pure and unit-tested.
"""

from __future__ import annotations

import argparse
import random
import socket
import struct
from collections.abc import Iterator, Sequence

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
# VLAN tag protocol identifiers: a customer tag (802.1Q) and a service tag (802.1ad).
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
TAG_PROTOCOLS = (ETH_P_8021Q, ETH_P_8021AD)
# The largest VLAN id; 0 is a priority tag, which Linux takes as no tag at all.
MAX_VID = 4095
# Where a tag goes: after the destination and source MACs.
MACS_LEN = 12
# ARP hardware types: Ethernet, and IEEE 802 (Linux accepts both on Ethernet).
ARPHRD_ETHER = 1
ARPHRD_IEEE802 = 6
IPPROTO_TCP = 6
# A guest's default IP TTL.
IP_TTL = 64
# TCP flag bits (RFC 9293).
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
# The segments a hostile guest mixes in: opening handshakes and stray segments of
# connections that never existed (each must not cost the datapath a slot).
SEGMENT_KINDS = (SYN, ACK, RST, RST | ACK, PSH | ACK, FIN | ACK)
# Every other frame is a SYN (the others cycle through the stray kinds): only a SYN may
# take a slot, so half the frames claim a new identity and a flood of N distinct frames
# asks for N / 2 slots.
STRAY_KINDS = tuple(k for k in SEGMENT_KINDS if k != SYN)
SYN_EVERY = 2
# What a data segment carries: the start of a request, as a real client would send.
DATA_PAYLOAD = b"GET /latest/meta-data/iam/security-credentials/ HTTP/1.1\r\n\r\n"
# A Linux guest's advertised receive window.
TCP_WINDOW = 64240
ARP_REQUEST, ARP_REPLY = 1, 2
BROADCAST_MAC = "ff:ff:ff:ff:ff:ff"


def mac_bytes(mac: str) -> bytes:
    return bytes(int(part, 16) for part in mac.split(":"))


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of `data`."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def tcp_frame(*, src_mac: str, dst_mac: str, src_ip: str, dst_ip: str, sport: int,
              dport: int, flags: int, seq: int, ack: int = 0, payload: bytes = b"",
              ip_id: int = 0) -> bytes:
    """One Ethernet/IPv4/TCP frame with correct IP and TCP checksums."""
    src, dst = socket.inet_aton(src_ip), socket.inet_aton(dst_ip)
    tcp_wo_sum = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags,
                             TCP_WINDOW, 0, 0) + payload
    pseudo = src + dst + struct.pack("!BBH", 0, IPPROTO_TCP, len(tcp_wo_sum))
    tcp_sum = checksum(pseudo + tcp_wo_sum)
    tcp = tcp_wo_sum[:16] + struct.pack("!H", tcp_sum) + tcp_wo_sum[18:]
    total_len = 20 + len(tcp)
    ip_wo_sum = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total_len, ip_id, 0, IP_TTL,
                            IPPROTO_TCP, 0, src, dst)
    ip = ip_wo_sum[:10] + struct.pack("!H", checksum(ip_wo_sum)) + ip_wo_sum[12:]
    return mac_bytes(dst_mac) + mac_bytes(src_mac) + struct.pack("!H", ETH_P_IP) + ip + tcp


def arp_frame(*, op: int, src_mac: str, dst_mac: str, sender_mac: str, sender_ip: str,
              target_mac: str, target_ip: str, hardware: int = ARPHRD_ETHER) -> bytes:
    """One Ethernet ARP frame (IPv4 over 6-byte MACs), ar_hrd = `hardware`."""
    body = struct.pack("!HHBBH6s4s6s4s", hardware, ETH_P_IP, 6, 4, op,
                       mac_bytes(sender_mac), socket.inet_aton(sender_ip),
                       mac_bytes(target_mac), socket.inet_aton(target_ip))
    return mac_bytes(dst_mac) + mac_bytes(src_mac) + struct.pack("!H", ETH_P_ARP) + body


def tagged(frame: bytes, tags: Sequence[tuple[int, int]]) -> bytes:
    """`frame` with VLAN tags, given outermost first as (TPID, VID), put after its MACs."""
    inserted = b"".join(struct.pack("!HH", tpid, vid) for tpid, vid in tags)
    return frame[:MACS_LEN] + inserted + frame[MACS_LEN:]


def parse_tag(text: str) -> tuple[int, int]:
    """'VID' (an 802.1Q tag) or 'TPID:VID' with TPID 8100 or 88a8 -> (TPID, VID)."""
    tpid_text, _, vid_text = text.rpartition(":")
    try:
        tpid = int(tpid_text, 16) if tpid_text else ETH_P_8021Q
        vid = int(vid_text)
    except ValueError:
        raise ValueError(f"VLAN tag {text!r} is not VID or TPID:VID") from None
    if tpid not in TAG_PROTOCOLS:
        raise ValueError(f"VLAN tag {text!r}: TPID must be 8100 or 88a8")
    if not 0 <= vid <= MAX_VID:
        raise ValueError(f"VLAN tag {text!r}: VID must be 0-{MAX_VID}")
    return tpid, vid


def vlan_tag_arg(text: str) -> tuple[int, int]:
    """parse_tag for argparse: a bad tag is a one-line usage error."""
    try:
        return parse_tag(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_vlan_option(parser: argparse.ArgumentParser) -> None:
    """The tools' shared --vlan option (repeatable, outermost tag first)."""
    parser.add_argument("--vlan", action="append", default=[], type=vlan_tag_arg,
                        metavar="[TPID:]VID",
                        help="send inside this VLAN tag (repeatable, outermost first; "
                             "TPID 8100 or 88a8, default 8100; VID 0 is a priority tag)")


def random_mac(rng: random.Random) -> str:
    """A unicast MAC: the group bit cleared, as the bridge would learn it."""
    first = rng.randrange(256) & 0xFE
    return ":".join(f"{b:02x}" for b in (first, *rng.randbytes(5)))


def random_unicast_ip(rng: random.Random) -> str:
    """An address a guest may claim: 1.0.0.0-223.255.255.255 minus 127/8."""
    while True:
        first = rng.randrange(1, 224)
        if first != 127:
            return f"{first}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"


def random_segments(count: int, *, dst_mac: str, dst_ip: str, dport: int,
                    seed: int = 0) -> Iterator[bytes]:
    """`count` frames from random MACs and IPs: every SYN_EVERY-th a SYN, the others
    cycling through STRAY_KINDS."""
    rng = random.Random(seed)
    for i in range(count):
        flags = SYN if i % SYN_EVERY == 0 else STRAY_KINDS[(i // SYN_EVERY) % len(STRAY_KINDS)]
        yield tcp_frame(
            src_mac=random_mac(rng), dst_mac=dst_mac, src_ip=random_unicast_ip(rng),
            dst_ip=dst_ip, sport=rng.randrange(1024, 65536), dport=dport, flags=flags,
            seq=rng.getrandbits(32), ack=rng.getrandbits(32) if flags & ACK else 0,
            payload=DATA_PAYLOAD if flags & PSH else b"", ip_id=i & 0xFFFF)
