"""MAC locks, for the operator: list them, release one early.

A MAC that got a shadow slot from one port is locked to that port while the port is
attached; from any other port it is answered nothing (a guest copying a neighbour's
MAC). When a VM legitimately moves to another port while its old port still exists
(a live migration within the host, a re-plugged NIC), or a neighbour holds an unbound
record's lock, the operator releases the lock: `transparent-md identity release --mac
MAC`. A released lock is held by nobody until the responder can no longer answer its
former holder from its identity cache; then the daemon hands it to the port in line
for it, or frees it (datapath.lock_keeper). Works from any process: only the pins.
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass
from pathlib import Path

from transparent_md.datapath import layout
from transparent_md.datapath.bpf_syscall import BpfMap
from transparent_md.datapath.lock_file import PortLink, SavedLock
from transparent_md.datapath.port_limits import add_released
from transparent_md.datapath.tables import SharedTable, open_table

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MacLock:
    mac: str
    ifindex: int
    port: str     # "" when the port is no longer in the ports map
    bridge: str


def _open(pin_dir: Path, name: str) -> BpfMap | SharedTable:
    return open_table(pin_dir, name)


def list_locks(pin_dir: str | Path, *, released: bool = False) -> list[MacLock]:
    """Every MAC lock of the daemon whose maps are pinned in `pin_dir` (with `released`,
    also those released and not handed on yet: ifindex 0)."""
    locks, ports = _open(pin_dir, layout.MAP_MAC_LOCKS), _open(pin_dir, layout.MAP_PORTS)
    try:
        found = []
        for key, ifindex in locks.items(layout.MacKey, ctypes.c_uint32):
            if ifindex.value == layout.LOCK_RELEASED and not released:
                continue
            port = layout.Port()
            known = ports.lookup(ctypes.c_uint32(ifindex.value), port)
            found.append(MacLock(
                mac=layout.mac_str(key.mac), ifindex=ifindex.value,
                port=port.name.decode() if known else "",
                bridge=port.bridge.decode() if known else "",
            ))
        return sorted(found, key=lambda lock: (lock.port, lock.mac))
    finally:
        locks.close()
        ports.close()


def leftover(pin_dir: Path) -> list[SavedLock]:
    """The locks in the pins an earlier run left (it was killed): exact to its last
    packet. Empty when there are none or they cannot be read (logged)."""
    if not (Path(pin_dir) / layout.MAP_MAC_LOCKS).exists():
        return []
    try:
        return [SavedLock(lock.mac, PortLink(lock.ifindex, lock.port))
                for lock in list_locks(pin_dir, released=True)]
    except OSError as exc:
        log.warning("the MAC locks left pinned in %s cannot be read (%s): using the lock "
                    "file alone", pin_dir, exc)
        return []


def release_mac(pin_dir: str | Path, mac: str) -> bool:
    """Release `mac`'s lock; False when it had none (or is released already). The lock
    is held by nobody until the daemon hands it on (see above)."""
    locks = _open(pin_dir, layout.MAP_MAC_LOCKS)
    released = _open(pin_dir, layout.MAP_PORT_RELEASED)
    try:
        key = layout.mac_key(mac.lower())
        ifindex = ctypes.c_uint32()
        if not locks.lookup(key, ifindex) or ifindex.value == layout.LOCK_RELEASED:
            return False
        locks.update(key, ctypes.c_uint32(layout.LOCK_RELEASED))
        add_released(released, ifindex.value, macs=1)
        return True
    finally:
        locks.close()
        released.close()


def port_link(pin_dir: str | Path, name: str) -> PortLink | None:
    """Our attached port called `name`, as a link; None when no attached port has it."""
    ports = _open(pin_dir, layout.MAP_PORTS)
    try:
        for ifindex, port in ports.items(ctypes.c_uint32, layout.Port):
            if port.name.decode() == name:
                return PortLink(ifindex.value, name)
        return None
    finally:
        ports.close()
