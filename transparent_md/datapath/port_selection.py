"""Which bridge ports face guests: the ones VM managers and container runtimes create.

By default only tap/tun devices (qemu, Firecracker, libvirt's vnetN) and veth ends
(containers, namespaces) are attached; a physical NIC, a bond, a VLAN or a VXLAN/GRE
device on the same bridge is an uplink, and answering metadata (or ARP for
169.254.169.254) to whatever sits behind it would serve the LAN. `--port GLOB` names
exactly the ports to attach instead; `--exclude-port GLOB` takes ports out of either.
Bridges may be given as globs too (Proxmox's `fwbr*`, OpenStack's `qbr*`).
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

from pyroute2 import IPRoute

# IFLA_INFO_KIND of guest-facing ports: a tap device reports "tun".
GUEST_PORT_KINDS = frozenset({"tun", "veth"})
_GLOB_CHARS = frozenset("*?[")


def is_glob(pattern: str) -> bool:
    return not _GLOB_CHARS.isdisjoint(pattern)


def link_kind(link) -> str | None:
    """IFLA_INFO_KIND of an RTM_NEWLINK message (None for a physical NIC)."""
    return link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")


@dataclass(frozen=True)
class PortSelection:
    """Bridges (names or globs), and which of their ports to attach."""

    bridges: tuple[str, ...]
    include: tuple[str, ...] = ()   # --port: only these (any kind)
    exclude: tuple[str, ...] = ()   # --exclude-port: never these

    def bridge_matches(self, name: str | None) -> bool:
        return name is not None and any(fnmatchcase(name, b) for b in self.bridges)

    def wants_port(self, name: str | None, kind: str | None) -> bool:
        if not name or any(fnmatchcase(name, g) for g in self.exclude):
            return False
        if self.include:
            return any(fnmatchcase(name, g) for g in self.include)
        return kind in GUEST_PORT_KINDS

    def exact_bridges(self) -> list[str]:
        """Bridges named without a glob: each must exist when the daemon starts."""
        return [b for b in self.bridges if not is_glob(b)]


def matching_bridges(ipr: IPRoute, selection: PortSelection) -> dict[int, str]:
    """ifindex -> name of every bridge in this namespace that the selection names."""
    return {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()
            if link_kind(link) == "bridge"
            and selection.bridge_matches(link.get_attr("IFLA_IFNAME"))}


def selected_ports(ipr: IPRoute, selection: PortSelection,
                   bridges: dict[int, str] | None = None) -> dict[int, tuple[str, str]]:
    """ifindex -> (port name, bridge name) of every port the selection attaches now."""
    bridges = matching_bridges(ipr, selection) if bridges is None else bridges
    ports = {}
    for link in ipr.get_links():
        selected = selected_port(link, selection, bridges)
        if selected is not None:
            ports[link["index"]] = selected
    return ports


def selected_port(link, selection: PortSelection,
                  bridges: dict[int, str]) -> tuple[str, str] | None:
    """(port name, bridge name) if the selection attaches `link` (an RTM_NEWLINK as the
    kernel has it now) as a port of one of `bridges`, else None."""
    master = link.get_attr("IFLA_MASTER")
    name = link.get_attr("IFLA_IFNAME")
    if master in bridges and selection.wants_port(name, link_kind(link)):
        return name, bridges[master]
    return None
