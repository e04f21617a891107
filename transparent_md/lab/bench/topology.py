"""The benchmark's namespaces: guests behind the tc path, and a routed segment for DNAT.

    hv:  bridges brb0/brb1 (and brb2... when the storm needs more ports than two
         bridges hold) <- veth ports -> wrk guests g<i> and storm guests s<i>
         (each with an on-link route to 169.254.169.254, and an IPv6 address with an
         on-link route to fd00:ec2::254; the port program answers ARP and NS)
         + the daemon (`transparent-md run`), and on 127.0.0.1 the loopback servers
         + a router-like namespace with a leg on each bridge (the .1 of each guest
           subnet), where nginx serves the fixed body to the same guests
    rt:  bridge brr = 10.99.0.1/16 <- routed guests n<i> (default via 10.99.0.1);
         nft DNAT 169.254.169.254:80 -> 10.99.0.1:DNAT_PORT, where the same
         Responder listens (the classic metadata-proxy interception)
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass

from transparent_md.datapath.responder_side import METADATA_IP
from transparent_md.identity.guest import Guest
from transparent_md.lab.hypervisor import GuestNs, Hypervisor
from transparent_md.lab.netns import Topology, run

# Two bridges: the daemon follows several, as on a host with several tenant networks.
BRIDGES = ("brb0", "brb1")
BRIDGE_NAME = "brb{index}"
# A Linux bridge holds at most 1,024 ports (port number 0 is reserved); more is
# "Exchange full". The bench fills a bridge up to this, leaving room for the wrk guests
# and the router's leg on the first two.
BRIDGE_MAX_PORTS = 1023
PORTS_PER_BRIDGE = 1000
# Guest addresses: one /16 per bridge, so 200+ guests fit without arithmetic tricks.
GUEST_NET = "10.{bridge}.0.0/16"
GUEST_NET_BASE = 20
METADATA_ROUTE = f"{METADATA_IP} dev eth0"
# IPv6: one /64 per bridge, and the EC2 IPv6 metadata address on-link.
GUEST_NET6 = "fd00:b{bridge}::/64"
METADATA_IP6 = "fd00:ec2::254"
METADATA_ROUTE6 = f"{METADATA_IP6}/128 dev eth0"
# The routed (DNAT) segment and its router address.
DNAT_BRIDGE = "brr"
DNAT_ROUTER = "10.99.0.1"
DNAT_PREFIXLEN = 16
# Nova's metadata port: where classic setups send the DNAT'ed requests.
DNAT_PORT = 8775
DNAT_TABLE = "tmd_bench"


@dataclass(frozen=True)
class BenchGuest:
    ns: str
    bridge: str
    port: str
    mac: str
    ip: str
    instance_id: str
    ipv6: str = ""

    def identity(self, ifindex: int = 0) -> Guest:
        """This guest as the datapath would name it (for the static resolvers)."""
        return Guest(bridge=self.bridge, port=self.port, ifindex=ifindex, mac=self.mac,
                     ip=self.ip)


# The router-like namespace's legs: eth0 on the first bridge, eth<i> on the others.
ROUTER_ROLE = "router"
ROUTER_PORT = "prt{index}"
ROUTER_HOST_SERIAL = 1  # x.y.0.1: the address each guest subnet leaves free for a router


def router_ip(bridge_index: int) -> str:
    net = ipaddress.IPv4Network(GUEST_NET.format(bridge=GUEST_NET_BASE + bridge_index))
    return str(net.network_address + ROUTER_HOST_SERIAL)


def build_router(hv: Hypervisor) -> str:
    """A namespace on every bridge at each subnet's .1, as a router would be: traffic
    to it crosses the same veth ports and bridge as the tc path, minus the redirect.
    Returns its namespace."""
    prefix = int(GUEST_NET.split("/")[1])
    first = hv.router(ROUTER_ROLE, bridge=BRIDGES[0], port=ROUTER_PORT.format(index=0),
                      addr=f"{router_ip(0)}/{prefix}")
    for index, bridge in enumerate(BRIDGES[1:], start=1):
        port, leg = ROUTER_PORT.format(index=index), f"eth{index}"
        hv.topo.ip(hv.ns, f"link add {port} type veth peer name {leg} netns {first.ns}",
                   f"link set {port} master {bridge}", f"link set {port} up")
        hv.topo.ip(first.ns, f"addr add {router_ip(index)}/{prefix} dev {leg}",
                   f"link set {leg} up")
    return first.ns


def bridge_index_of(guest: BenchGuest) -> int:
    return bridge_index(guest.bridge)


def bridge_index(bridge: str) -> int:
    """brbN -> N: each bridge's guests live in a /16 of their own (GUEST_NET)."""
    return int(bridge.removeprefix(BRIDGE_NAME.format(index="")))


def _guest_ip(bridge_index: int, serial: int) -> str:
    net = ipaddress.IPv4Network(GUEST_NET.format(bridge=GUEST_NET_BASE + bridge_index))
    return str(net.network_address + 2 + serial)  # .1 left free for a router


def bridges_for(guests: int) -> tuple[str, ...]:
    """Every bridge a run with `guests` guests in all needs: BRIDGES, and as many more
    as keep each bridge within PORTS_PER_BRIDGE ports."""
    count = max(len(BRIDGES), math.ceil((guests + len(BRIDGES)) / PORTS_PER_BRIDGE))
    return tuple(BRIDGE_NAME.format(index=i) for i in range(count))


def add_guests(hv: Hypervisor, role: str, count: int,
               bridges: tuple[str, ...] = BRIDGES) -> list[BenchGuest]:
    """`count` guests spread over `bridges`, named `<role><i>`, ports `p<role><i>`."""
    for bridge in bridges:
        if bridge not in hv.bridges:
            hv.bridge(bridge)
    ports = {bridge: 0 for bridge in bridges}
    for guest in hv.guests.values():
        ports[guest.bridge] = ports.get(guest.bridge, 0) + 1
    out = []
    for i in range(count):
        b = i % len(bridges)
        ports[bridges[b]] += 1
        if ports[bridges[b]] > BRIDGE_MAX_PORTS:
            raise RuntimeError(f"bridge {bridges[b]} is full: spread the guests over more "
                               "bridges (topology.bridges_for)")
        ip = _guest_ip(bridge_index(bridges[b]), len(hv.guests))
        g: GuestNs = hv.guest(f"{role}{i}", bridge=bridges[b], port=f"p{role}{i}",
                              addr=f"{ip}/16", routes=[METADATA_ROUTE])
        net6 = ipaddress.IPv6Network(GUEST_NET6.format(bridge=b))
        ipv6 = str(net6.network_address + 2 + len(hv.guests))
        hv.topo.ip(g.ns, f"addr add {ipv6}/64 dev eth0 nodad", f"route add {METADATA_ROUTE6}")
        out.append(BenchGuest(ns=g.ns, bridge=g.bridge, port=g.port, mac=g.mac, ip=g.ip,
                              instance_id=f"i-bench{role}{i:05d}", ipv6=ipv6))
    return out


def pin_metadata_neighbour(hv: Hypervisor, guests: list[BenchGuest], host_veth: str) -> None:
    """Give each guest a permanent neighbour entry for 169.254.169.254: the MAC the
    datapath answers its ARP with (the daemon's host veth end).

    Guests here are namespaces, and every namespace shares the host kernel's ARP table,
    which by default refuses new entries past 1,024 (a host-wide setting the bench must
    not change); real VMs keep their own. A storm of 1,000 namespace guests, each with
    its entry for .254, met that limit and its last guests' SYNs were never sent. The
    kernel does not count permanent entries against it. Asking ARP is tested elsewhere.
    """
    out = hv.topo.sh(hv.ns, ["cat", f"/sys/class/net/{host_veth}/address"], check=True)
    mac = out.stdout.strip()
    for guest in guests:
        hv.topo.ip(guest.ns, f"neigh replace {METADATA_IP} lladdr {mac} dev eth0 nud permanent")


def build_hypervisor(topo: Topology) -> Hypervisor:
    hv = Hypervisor(topo)
    for br in BRIDGES:
        hv.bridge(br)
    return hv


def build_dnat_segment(topo: Topology, count: int) -> tuple[str, list[str]]:
    """The routed segment with nft DNAT in its router namespace: (router ns, guest nss)."""
    rt = Hypervisor(topo, role="rt")
    rt.bridge(DNAT_BRIDGE)
    topo.ip(rt.ns, f"addr add {DNAT_ROUTER}/{DNAT_PREFIXLEN} dev {DNAT_BRIDGE}")
    net = ipaddress.IPv4Network(f"{DNAT_ROUTER}/{DNAT_PREFIXLEN}", strict=False)
    guests = [
        rt.guest(f"n{i}", bridge=DNAT_BRIDGE, port=f"pn{i}",
                 addr=f"{net.network_address + 2 + i}/{DNAT_PREFIXLEN}",
                 routes=[f"default via {DNAT_ROUTER}"]).ns
        for i in range(count)
    ]
    rules = (
        f"table ip {DNAT_TABLE} {{\n"
        "  chain prerouting {\n"
        "    type nat hook prerouting priority dstnat; policy accept;\n"
        f"    ip daddr 169.254.169.254 tcp dport 80 dnat to {DNAT_ROUTER}:{DNAT_PORT}\n"
        "  }\n}\n"
    )
    # Rules live only in the router namespace of this run; they go away with it.
    run(["ip", "netns", "exec", rt.ns, "nft", "-f", "-"], stdin=rules)
    return rt.ns, guests


def dnat_guest_ips(count: int) -> list[str]:
    net = ipaddress.IPv4Network(f"{DNAT_ROUTER}/{DNAT_PREFIXLEN}", strict=False)
    return [str(net.network_address + 2 + i) for i in range(count)]
