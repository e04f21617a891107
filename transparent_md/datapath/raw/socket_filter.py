"""Classic BPF socket filters (SO_ATTACH_FILTER): what may reach Python at all.

On a guest port only frames the guest sent (never what the bridge sends out of the
port, our own replies included), untagged (a tag the NIC took off still counts), and
either IPv4 TCP to 169.254.169.254:80 (any fragment but the first is refused) or ARP
that asks for, or claims, one of our addresses. On the responder's veth only its
replies: IPv4 TCP from 169.254.169.254:80 to a shadow address. Everything else stays in
the kernel, at no Python cost.
"""

from __future__ import annotations

import ctypes
import ipaddress
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass

# Opcodes (linux/bpf_common.h, linux/filter.h).
_LD, _LDX, _JMP, _RET = 0x00, 0x01, 0x05, 0x06
_W, _H, _B = 0x00, 0x08, 0x10
_ABS, _MSH, _IND = 0x20, 0xA0, 0x40
_JEQ, _JSET = 0x10, 0x40
_ALU_AND = 0x04 | 0x50
# Ancillary loads: negative offsets the kernel resolves to skb fields.
_SKF_AD_OFF = -0x1000
SKF_AD_PKTTYPE = 4
SKF_AD_VLAN_TAG_PRESENT = 48
PACKET_OUTGOING = 4
SO_ATTACH_FILTER = 26
# Accept the whole frame (a GSO frame from a guest can be larger than its MTU).
ACCEPT_BYTES = 0x40000

ETH_P_IP, ETH_P_ARP = 0x0800, 0x0806
METADATA_IP = "169.254.169.254"
METADATA_PORT = 80
# Offsets in an untagged Ethernet frame.
_ETHERTYPE, _IP_VHL, _IP_PROTO, _IP_FRAG, _IP_SRC, _IP_DST = 12, 14, 23, 20, 26, 30
_ARP_SPA, _ARP_TPA = 28, 38
_IP_OFFSET_MASK = 0x1FFF
_TCP = 6


@dataclass(frozen=True)
class Insn:
    code: int
    k: int = 0
    jt: str | None = None  # label, or None: the next instruction
    jf: str | None = None
    label: str | None = None


def _ad(field: int) -> int:
    return (_SKF_AD_OFF + field) & 0xFFFFFFFF


def _ip(address: str) -> int:
    return int(ipaddress.IPv4Address(address))


def assemble(program: list[Insn]) -> list[tuple[int, int, int, int]]:
    """(code, jt, jf, k) tuples with labels resolved to forward offsets."""
    where = {insn.label: i for i, insn in enumerate(program) if insn.label}

    def offset(at: int, label: str | None) -> int:
        if label is None:
            return 0
        distance = where[label] - at - 1
        if not 0 <= distance <= 255:
            raise ValueError(f"socket filter jump to {label} out of range")
        return distance

    return [(insn.code, offset(i, insn.jt), offset(i, insn.jf), insn.k & 0xFFFFFFFF)
            for i, insn in enumerate(program)]


def _common_head(drop: str) -> list[Insn]:
    """Refuse what the device sends (bridge floods, our own replies) and tagged frames."""
    return [
        Insn(_LD | _W | _ABS, _ad(SKF_AD_PKTTYPE)),
        Insn(_JMP | _JEQ, PACKET_OUTGOING, jt=drop),
        Insn(_LD | _W | _ABS, _ad(SKF_AD_VLAN_TAG_PRESENT)),
        Insn(_JMP | _JEQ, 0, jf=drop),
        Insn(_LD | _H | _ABS, _ETHERTYPE),
    ]


def _tail() -> list[Insn]:
    return [Insn(_RET, ACCEPT_BYTES, label="accept"), Insn(_RET, 0, label="drop")]


def port_program(watched_ips: Iterable[str]) -> list[tuple[int, int, int, int]]:
    """The filter of a guest port; `watched_ips`: gateway addresses we answer ARP for."""
    ours = [_ip(METADATA_IP), *sorted({_ip(a) for a in watched_ips} - {_ip(METADATA_IP)})]
    program = [
        *_common_head("drop"),
        Insn(_JMP | _JEQ, ETH_P_IP, jt="ipv4"),
        Insn(_JMP | _JEQ, ETH_P_ARP, jt="arp", jf="drop"),
        Insn(_LD | _W | _ABS, _IP_DST, label="ipv4"),
        Insn(_JMP | _JEQ, _ip(METADATA_IP), jf="drop"),
        Insn(_LD | _B | _ABS, _IP_PROTO),
        Insn(_JMP | _JEQ, _TCP, jf="drop"),
        Insn(_LD | _H | _ABS, _IP_FRAG),
        Insn(_JMP | _JSET, _IP_OFFSET_MASK, jt="drop"),
        Insn(_LDX | _B | _MSH, _IP_VHL),
        Insn(_LD | _H | _IND, _IP_VHL + 2),  # TCP destination port
        Insn(_JMP | _JEQ, METADATA_PORT, jt="accept", jf="drop"),
        Insn(_LD | _W | _ABS, _ARP_TPA, label="arp"),
        *[Insn(_JMP | _JEQ, ip, jt="accept") for ip in ours],
        Insn(_LD | _W | _ABS, _ARP_SPA),
        *[Insn(_JMP | _JEQ, ip, jt="accept") for ip in ours],
        Insn(_RET, 0),
        *_tail(),
    ]
    return assemble(program)


def reply_program(shadow: ipaddress.IPv4Network) -> list[tuple[int, int, int, int]]:
    """The filter of the responder's veth: its TCP replies to shadow addresses."""
    program = [
        *_common_head("drop"),
        Insn(_JMP | _JEQ, ETH_P_IP, jf="drop"),
        Insn(_LD | _W | _ABS, _IP_SRC),
        Insn(_JMP | _JEQ, _ip(METADATA_IP), jf="drop"),
        Insn(_LD | _B | _ABS, _IP_PROTO),
        Insn(_JMP | _JEQ, _TCP, jf="drop"),
        Insn(_LD | _W | _ABS, _IP_DST),
        Insn(_ALU_AND, int(shadow.netmask)),
        Insn(_JMP | _JEQ, int(shadow.network_address), jf="drop"),
        Insn(_LDX | _B | _MSH, _IP_VHL),
        Insn(_LD | _H | _IND, _IP_VHL),  # TCP source port
        Insn(_JMP | _JEQ, METADATA_PORT, jt="accept", jf="drop"),
        *_tail(),
    ]
    return assemble(program)


def attach(sock: socket.socket, program: list[tuple[int, int, int, int]]) -> None:
    """Attach (or replace) the socket's filter; the kernel copies the program."""
    raw = b"".join(struct.pack("=HBBI", *insn) for insn in program)
    buffer = ctypes.create_string_buffer(raw, len(raw))
    fprog = struct.pack("=HxxxxxxQ", len(program), ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
