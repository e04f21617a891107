"""ctypes mirrors of the structs in bpf/include/tmd_maps.h (change both together)."""

from __future__ import annotations

import ctypes
import ipaddress
import socket
from enum import IntEnum

MAC_LEN = 6
IFNAME_LEN = 16  # IFNAMSIZ

# Config flags (TMD_CFG_*).
CFG_ANSWER_METADATA_ARP = 0x1

# Map names, as declared in the C; also the file names of their pins.
MAP_CONFIG = "tmd_config"
MAP_PORTS = "tmd_ports"
MAP_ARP = "tmd_arp"
MAP_BY_GUEST = "tmd_by_guest"
MAP_SLOTS = "tmd_slots"
MAP_NEXT_SLOT = "tmd_next_slot"
MAP_STATS = "tmd_stats"
ALL_MAPS = (MAP_CONFIG, MAP_PORTS, MAP_ARP, MAP_BY_GUEST, MAP_SLOTS, MAP_NEXT_SLOT, MAP_STATS)

# TMD_MAX_SLOTS: slot 0 means "none", so at most MAX_SLOTS - 1 identities at once.
MAX_SLOTS = 65536


class Stat(IntEnum):
    """Counters in tmd_stats, in the order of enum tmd_stat."""

    REQUEST_REDIRECTED = 0
    REPLY_REDIRECTED = 1
    ARP_ANSWERED = 2
    METADATA_DROPPED = 3
    REPLY_DROPPED = 4
    NO_SLOT = 5
    STRAY_DROPPED = 6


class Config(ctypes.Structure):
    _fields_ = [
        ("shadow_net", ctypes.c_uint32),  # network order, stored as raw bytes
        ("shadow_mask", ctypes.c_uint32),
        ("md_ifindex", ctypes.c_uint32),
        ("shadow_slots", ctypes.c_uint32),
        ("md_mac", ctypes.c_uint8 * MAC_LEN),
        ("arp_mac", ctypes.c_uint8 * MAC_LEN),
        ("flags", ctypes.c_uint32),
        ("slot_hold_ns", ctypes.c_uint64),
    ]


class Slot(ctypes.Structure):
    _fields_ = [
        ("ifindex", ctypes.c_uint32),
        ("ip", ctypes.c_uint32),
        ("mac", ctypes.c_uint8 * MAC_LEN),
        ("gw_mac", ctypes.c_uint8 * MAC_LEN),
        ("pad", ctypes.c_uint32),
        ("last_seen_ns", ctypes.c_uint64),
    ]


class Port(ctypes.Structure):
    _fields_ = [("bridge", ctypes.c_char * IFNAME_LEN), ("name", ctypes.c_char * IFNAME_LEN)]


class ArpKey(ctypes.Structure):
    _fields_ = [("ifindex", ctypes.c_uint32), ("ip", ctypes.c_uint32)]


def be32(address: str | ipaddress.IPv4Address) -> int:
    """An IPv4 address as the u32 whose memory holds it in network order."""
    return int.from_bytes(socket.inet_aton(str(address)), "little")


def ip_from_be32(value: int) -> str:
    return socket.inet_ntoa(value.to_bytes(4, "little"))


def mac_bytes(mac: str) -> bytes:
    return bytes(int(part, 16) for part in mac.split(":"))


def mac_str(raw: bytes | ctypes.Array) -> str:
    return ":".join(f"{b:02x}" for b in bytes(raw))
