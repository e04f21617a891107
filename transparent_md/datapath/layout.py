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
CFG_MAC_LOCK = 0x2
# Slot flags (TMD_SLOT_*): the identity's MAC is locked to another port.
SLOT_LOCKED_ELSEWHERE = 0x1
# ... an IPv6 guest, translated to IPv4 on the way in (TMD_SLOT_IPV6)
SLOT_IPV6 = 0x2
# ... that asked fe80::a9fe:a9fe rather than fd00:ec2::254 (TMD_SLOT_LINK_LOCAL_MD).
SLOT_LINK_LOCAL_MD = 0x4
# GuestKey.md_addr: which metadata address the identity asked (TMD_MD_ADDR_*).
MD_ADDR_IPV4, MD_ADDR_EC2_IPV6, MD_ADDR_LINK_LOCAL = 0, 1, 2
# Slot.free_since_ns of a taken slot (TMD_SLOT_TAKEN).
SLOT_TAKEN = 2**64 - 1

# Map names, as declared in the C; also the file names of their pins.
MAP_CONFIG = "tmd_config"
MAP_PORTS = "tmd_ports"
MAP_ARP = "tmd_arp"
MAP_ND = "tmd_nd"
MAP_BY_GUEST = "tmd_by_guest"
MAP_SLOTS = "tmd_slots"
MAP_NEXT_SLOT = "tmd_next_slot"
MAP_MAC_LOCKS = "tmd_mac_locks"
MAP_PORT_USAGE = "tmd_port_usage"
MAP_PORT_RELEASED = "tmd_port_released"
MAP_EVENTS = "tmd_events"
MAP_DROPS = "tmd_drops"
ALL_MAPS = (MAP_CONFIG, MAP_PORTS, MAP_ARP, MAP_ND, MAP_BY_GUEST, MAP_SLOTS, MAP_NEXT_SLOT,
            MAP_MAC_LOCKS, MAP_PORT_USAGE, MAP_PORT_RELEASED, MAP_EVENTS, MAP_DROPS)

# TMD_MAX_SLOTS: slot 0 means "none", so at most MAX_SLOTS - 1 identities at once.
MAX_SLOTS = 65536
# The longest a reader of the slot map (identity's ShadowResolver, in the responder) may
# cache what a slot stands for. Declared here, with the slots, because the datapath
# keeps its side of it: a released slot goes to another identity only after the slot
# reuse delay, which must be longer (slot_release, and checked where it is set).
IDENTITY_CACHE_TTL_S = 10.0
# A MAC lock held by no port (its value in tmd_mac_locks): the operator released it and
# it is quiet until no reader can still cache its former holder (lock_keeper). No port
# has ifindex 0, so the port program flags every slot of that MAC meanwhile.
LOCK_RELEASED = 0


class Event(IntEnum):
    """Counters in tmd_events, in the order of enum tmd_event: what was done."""

    REQUEST_REDIRECTED = 0
    REPLY_REDIRECTED = 1
    ARP_ANSWERED = 2
    SLOT_ALLOCATED = 3
    FORGED_FLAGGED = 4
    NS_ANSWERED = 5


class Drop(IntEnum):
    """Counters in tmd_drops, in the order of enum tmd_drop: one reason per drop."""

    UNSERVED = 0
    BAD_SOURCE = 1
    NOT_SYN = 2
    SYN_RATE = 3
    PORT_QUOTA = 4
    MAC_QUOTA = 5
    NO_SLOT = 6
    REWRITE_FAILED = 7
    STRAY = 8
    ARP_CLAIM = 9
    REPLY_UNSERVED = 10
    REPLY_NO_SLOT = 11
    TAGGED_ARP_CLAIM = 12
    TAGGED_METADATA = 13
    TOO_MANY_TAGS = 14
    ND_CLAIM = 15
    TAGGED_ND_CLAIM = 16


class Config(ctypes.Structure):
    _fields_ = [
        ("shadow_net", ctypes.c_uint32),  # network order, stored as raw bytes
        ("shadow_mask", ctypes.c_uint32),
        ("md_ifindex", ctypes.c_uint32),
        ("shadow_slots", ctypes.c_uint32),
        ("md_mac", ctypes.c_uint8 * MAC_LEN),
        ("arp_mac", ctypes.c_uint8 * MAC_LEN),
        ("flags", ctypes.c_uint32),
        ("port_identity_quota", ctypes.c_uint32),
        ("port_mac_quota", ctypes.c_uint32),
        ("syn_cost_ns", ctypes.c_uint64),
        ("syn_burst_ns", ctypes.c_uint64),
        ("slot_reuse_delay_ns", ctypes.c_uint64),
    ]


class GuestKey(ctypes.Structure):
    _fields_ = [
        ("ifindex", ctypes.c_uint32),
        ("ip", ctypes.c_uint32),
        ("mac", ctypes.c_uint8 * MAC_LEN),
        ("md_addr", ctypes.c_uint8),  # MD_ADDR_*
        ("pad", ctypes.c_uint8),
        ("ip6", ctypes.c_uint8 * 16),  # an IPv6 guest's address (ip is 0 then)
    ]


class Slot(ctypes.Structure):
    _fields_ = [
        ("ifindex", ctypes.c_uint32),  # 0: free
        ("ip", ctypes.c_uint32),
        ("mac", ctypes.c_uint8 * MAC_LEN),
        ("gw_mac", ctypes.c_uint8 * MAC_LEN),
        ("flags", ctypes.c_uint32),
        ("last_seen_ns", ctypes.c_uint64),  # CLOCK_MONOTONIC, as bpf_ktime_get_ns()
        ("free_since_ns", ctypes.c_uint64),  # SLOT_TAKEN, or when released (0: never used)
        ("ip6", ctypes.c_uint8 * 16),  # SLOT_IPV6: the guest's IPv6 address
    ]


class Port(ctypes.Structure):
    _fields_ = [("bridge", ctypes.c_char * IFNAME_LEN), ("name", ctypes.c_char * IFNAME_LEN)]


class ArpKey(ctypes.Structure):
    _fields_ = [("ifindex", ctypes.c_uint32), ("ip", ctypes.c_uint32)]


class NdKey(ctypes.Structure):
    _fields_ = [("ifindex", ctypes.c_uint32), ("ip6", ctypes.c_uint8 * 16)]


class MacKey(ctypes.Structure):
    _fields_ = [("mac", ctypes.c_uint8 * MAC_LEN), ("pad", ctypes.c_uint8 * 2)]


class PortUsage(ctypes.Structure):
    """Written by the port program (user space only on attach)."""

    _fields_ = [
        ("identities_taken", ctypes.c_uint64),
        ("macs_locked", ctypes.c_uint64),
        ("syn_tat_ns", ctypes.c_uint64),
    ]


class PortReleased(ctypes.Structure):
    """Written by user space only: in use = PortUsage's taken - these."""

    _fields_ = [
        ("identities_released", ctypes.c_uint64),
        ("macs_unlocked", ctypes.c_uint64),
    ]


# What each map holds, as (key type, value type): the contract checked against what bcc
# generated from the C (transparent_md/datapath/contract.py). Per-CPU values list one
# element's type.
MAP_TYPES: dict[str, tuple[type, type]] = {
    MAP_CONFIG: (ctypes.c_uint32, Config),
    MAP_PORTS: (ctypes.c_uint32, Port),
    MAP_ARP: (ArpKey, ctypes.c_uint8),
    MAP_ND: (NdKey, ctypes.c_uint8),
    MAP_BY_GUEST: (GuestKey, ctypes.c_uint32),
    MAP_SLOTS: (ctypes.c_uint32, Slot),
    MAP_NEXT_SLOT: (ctypes.c_uint32, ctypes.c_uint64),
    MAP_MAC_LOCKS: (MacKey, ctypes.c_uint32),
    MAP_PORT_USAGE: (ctypes.c_uint32, PortUsage),
    MAP_PORT_RELEASED: (ctypes.c_uint32, PortReleased),
    MAP_EVENTS: (ctypes.c_uint32, ctypes.c_uint64),
    MAP_DROPS: (ctypes.c_uint32, ctypes.c_uint64),
}
# Counter maps and the enum that names their entries: max_entries must equal its length.
COUNTER_ENUMS: dict[str, type[IntEnum]] = {MAP_EVENTS: Event, MAP_DROPS: Drop}


def mac_key(mac: str) -> MacKey:
    key = MacKey()
    key.mac[:] = mac_bytes(mac)
    return key


def be32(address: str | ipaddress.IPv4Address) -> int:
    """An IPv4 address as the u32 whose memory holds it in network order."""
    return int.from_bytes(socket.inet_aton(str(address)), "little")


def ip_from_be32(value: int) -> str:
    return socket.inet_ntoa(value.to_bytes(4, "little"))


def nd_key(ifindex: int, address: str) -> NdKey:
    key = NdKey(ifindex=ifindex)
    key.ip6[:] = ipaddress.IPv6Address(address).packed
    return key


def slot_ip(slot: Slot) -> str:
    """The guest address a slot stands for: dotted IPv4, or IPv6 for an IPv6 guest."""
    if slot.flags & SLOT_IPV6:
        return str(ipaddress.IPv6Address(bytes(slot.ip6)))
    return ip_from_be32(slot.ip)


def guest_key(slot: Slot) -> GuestKey:
    """The tmd_by_guest key of the identity a slot stands for."""
    key = GuestKey(ifindex=slot.ifindex, ip=slot.ip)
    key.mac[:] = bytes(slot.mac)
    key.ip6[:] = bytes(slot.ip6)
    if slot.flags & SLOT_IPV6:
        key.md_addr = MD_ADDR_LINK_LOCAL if slot.flags & SLOT_LINK_LOCAL_MD else MD_ADDR_EC2_IPV6
    return key


def mac_bytes(mac: str) -> bytes:
    return bytes(int(part, 16) for part in mac.split(":"))


def mac_str(raw: bytes | ctypes.Array) -> str:
    return ":".join(f"{b:02x}" for b in bytes(raw))
