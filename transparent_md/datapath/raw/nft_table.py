"""The raw datapath's nftables tables, owned by the daemon: created at start (a table
left by a killed run of the same daemon is taken over: replaced in the same
transaction), guarded while it runs, removed at stop.

- bridge family, hook prerouting: what a guest port's packet socket already took (TCP
  to 169.254.169.254, ARP asking for or claiming our addresses, frames sent to the MAC
  we answer ARP with, tagged frames aimed at us) is dropped, so the bridge neither
  forwards it to other guests nor hands it to the host. Dropped as it enters the
  bridge, once per frame: at the forward hook a frame to a MAC the bridge has not
  learnt (the one we answer ARP with is on no port) was first flooded, cloned and
  judged once per port, which made a boot storm's cost grow with the bridge's size.
  Only ports in the set `ports` (the selected guest ports) are judged; uplinks are
  left alone.
- netdev family, ingress of the responder veth's host end: everything is dropped after
  the packet socket there saw it, so the host stack never acts on a reply.

Through Debian's python3-nftables (libnftables): each change is one nft transaction in
nft's own language, the form nft documents and operators read back with `nft list`.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from collections.abc import Callable, Iterable
from contextlib import suppress
from typing import TypeVar

from transparent_md.errors import UserError
from transparent_md.names import DaemonNames

T = TypeVar("T")
log = logging.getLogger(__name__)

METADATA_IP = "169.254.169.254"
# Before the bridge's other filters (conntrack, br_netfilter users sit at 0 and above).
BRIDGE_PRIORITY = -300
# First on the responder veth's ingress.
NETDEV_PRIORITY = -500
_VLAN_TYPES = "{ 0x8100, 0x88a8, 0x9100 }"


def table_name(names: DaemonNames) -> str:
    return f"transparent-md-{names.name}"


def _nft():
    try:
        import nftables
    except ImportError as exc:
        raise UserError("the raw datapath needs Debian's python3-nftables (libnftables) "
                        "visible to this interpreter: apt install python3-nftables") from exc
    nft = nftables.Nftables()
    nft.set_json_output(True)
    return nft


def _one_at_a_time(method: Callable[..., T]) -> Callable[..., T]:
    """The method runs holding the table's lock (see NftTables.__init__)."""
    @functools.wraps(method)
    def locked(self, *args, **kwargs) -> T:
        with self._lock:
            return method(self, *args, **kwargs)
    return locked


def _ip_hex(ip: str) -> str:
    return "0x" + "".join(f"{int(part):02x}" for part in ip.split("."))


def guard_rules(answer_metadata_arp: bool, gateway_ips: Iterable[str], arp_mac: str) -> list[str]:
    """The rules of chain `guard` (jumped to for frames from a selected port). Set
    `gateways` holds (port, address) for each gateway address we answer on a port."""
    meta = _ip_hex(METADATA_IP)
    rules = [
        f"ether type ip ip daddr {METADATA_IP} counter drop",
        f"ether type arp arp saddr ip {METADATA_IP} counter drop",
        "ether type arp iifname . arp saddr ip @gateways counter drop",
        "ether type arp arp operation request iifname . arp daddr ip @gateways counter drop",
    ]
    if answer_metadata_arp:
        rules.append(f"ether type arp arp operation request arp daddr ip {METADATA_IP} "
                     "counter drop")
    # Tagged (one or two tags, a tag the NIC took off included): never served. A raw
    # payload cannot be looked up with the port, so a tagged claim of any gateway
    # address is dropped on every judged port.
    for address in (meta, *sorted({_ip_hex(ip) for ip in gateway_ips})):
        rules += [f"ether type {_VLAN_TYPES} @ll,128,16 0x0806 @ll,256,32 {address} "
                  "counter drop",
                  f"ether type {_VLAN_TYPES} @ll,160,16 0x0806 @ll,288,32 {address} "
                  "counter drop"]
    rules += [
        f"ether type {_VLAN_TYPES} @ll,128,16 0x0800 @ll,272,32 {meta} counter drop",
        f"ether type {_VLAN_TYPES} @ll,160,16 0x0800 @ll,304,32 {meta} counter drop",
        f"ether type {_VLAN_TYPES} @ll,128,16 0x0806 @ll,336,32 {meta} counter drop",
        f"ether type {_VLAN_TYPES} @ll,160,16 0x0806 @ll,368,32 {meta} counter drop",
        f"ether type {_VLAN_TYPES} @ll,128,16 {_VLAN_TYPES} @ll,160,16 {_VLAN_TYPES} "
        "counter drop",
        f"ether daddr {arp_mac} counter drop",
    ]
    return rules


class NftTables:
    """The daemon's two tables; `install()` (re)builds them in one transaction.

    `ports` maps each judged port's name to the gateway addresses answered on it."""

    def __init__(self, names: DaemonNames, answer_metadata_arp: bool) -> None:
        self.name = table_name(names)
        self.host_veth = names.host_veth
        self.answer_metadata_arp = answer_metadata_arp
        self._nft = _nft()
        # The port watcher changes the table while the guard lists it. One libnftables
        # context is not safe to share between threads (a race garbles the replies it
        # parses: "nf_tables kernel ABI is broken"), and the guard must compare the kernel's
        # table with `ports` as of one moment, not halfway through an add: so every public
        # method holds this lock for its whole change or check (reentrant: add_port
        # calls remove_port).
        self._lock = threading.RLock()
        self.gateway_ips: set[str] = set()
        self.arp_mac = "00:00:00:00:00:00"
        self.ports: dict[str, tuple[str, ...]] = {}
        self._expected_rules = 0

    def run(self, commands: str) -> dict:
        rc, out, err = self._nft.cmd(commands)
        if rc != 0:
            raise UserError(f"nftables refused the raw datapath's table {self.name}: "
                            f"{err.strip().splitlines()[0] if err.strip() else rc}")
        return json.loads(out) if out.strip() else {}

    def _elements(self, name: str, gateways: Iterable[str]) -> list[str]:
        t = self.name
        lines = [f'add element bridge {t} ports {{ "{name}" }}']
        lines += [f'add element bridge {t} gateways {{ "{name}" . {ip} }}' for ip in gateways]
        return lines

    @_one_at_a_time
    def install(self) -> None:
        """Create both tables afresh, replacing any left by an earlier run of ours."""
        t = self.name
        rules = guard_rules(self.answer_metadata_arp, self.gateway_ips, self.arp_mac)
        self._expected_rules = len(rules) + 1
        lines = [
            f"add table bridge {t}", f"delete table bridge {t}",
            f"add table netdev {t}", f"delete table netdev {t}",
            f"add table bridge {t}",
            f"add set bridge {t} ports {{ type ifname; }}",
            f"add set bridge {t} gateways {{ type ifname . ipv4_addr; }}",
            f"add chain bridge {t} guard",
            *(f"add rule bridge {t} guard {rule}" for rule in rules),
            f"add chain bridge {t} prerouting {{ type filter hook prerouting priority "
            f"{BRIDGE_PRIORITY}; policy accept; }}",
            f"add rule bridge {t} prerouting iifname @ports jump guard",
            f"add table netdev {t}",
            f"add chain netdev {t} responder {{ type filter hook ingress device "
            f'"{self.host_veth}" priority {NETDEV_PRIORITY}; policy drop; }}',
        ]
        for name, gateways in sorted(self.ports.items()):
            lines += self._elements(name, gateways)
        self.run("\n".join(lines))

    @_one_at_a_time
    def add_port(self, name: str, gateways: Iterable[str]) -> None:
        gateways = tuple(gateways)
        previous = self.ports.get(name)
        if previous is not None:
            self.remove_port(name)
        self.ports[name] = gateways
        self.run("\n".join(self._elements(name, gateways)))

    @_one_at_a_time
    def remove_port(self, name: str) -> None:
        gateways = self.ports.pop(name, ())
        t = self.name
        for line in (f'delete element bridge {t} ports {{ "{name}" }}',
                     *(f'delete element bridge {t} gateways {{ "{name}" . {ip} }}'
                       for ip in gateways)):
            with suppress(UserError):  # already gone (the guard rebuilt the table)
                self.run(line)

    @_one_at_a_time
    def intact(self) -> bool:
        """Both tables there, with every rule and port of ours."""
        try:
            bridge = self.run(f"list table bridge {self.name}")
            self.run(f"list table netdev {self.name}")
        except UserError:
            return False
        items = bridge.get("nftables", [])
        rules = sum(1 for item in items if "rule" in item)
        listed = next((set(item["set"].get("elem", [])) for item in items
                       if "set" in item and item["set"].get("name") == "ports"), set())
        return rules == self._expected_rules and listed == set(self.ports)

    @_one_at_a_time
    def remove(self) -> None:
        for family in ("bridge", "netdev"):
            try:
                self.run(f"add table {family} {self.name}\ndelete table {family} {self.name}")
            except UserError as exc:
                log.warning("could not remove nftables table %s %s: %s", family, self.name, exc)
