"""The responder's side of the datapath: a veth pair and, by default, its own namespace.

    host netns:      <name>-md (tc ingress: md_ingress)  <- requests are redirected out of it
    responder netns: md1 = 169.254.169.254/32, arp off,
                     route <shadow prefix> via <its network address> dev md1 onlink

Keeping 169.254.169.254 inside a namespace of its own leaves the host's own route to an
upstream metadata service (a hypervisor that is itself a cloud VM) untouched.
`--responder-netns none` puts the responder end in the host namespace instead, named
`<name>-md1` so it is never confused with anyone else's device: the host then answers
169.254.169.254 itself. Device names come from `transparent_md.names`.
"""

from __future__ import annotations

import errno
import os
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import IPRoute, NetNS, netns
from pyroute2.netlink.exceptions import NetlinkError

from transparent_md.names import DaemonNames
from transparent_md.process import setns_net

# rtnetlink route flag: the next hop is on the link, whatever its address (rtnetlink.h).
RTNH_F_ONLINK = 4

METADATA_IP = "169.254.169.254"
METADATA_PORT = 80
# Room for a 1,000-guest boot storm's SYNs between two accept rounds.
LISTEN_BACKLOG = 4096
# SYN-ACK retries in our responder namespace (kernel default 5, about a minute): 1 s +
# 2 s of retries, then the request sock of a SYN nobody completes (a spoofed source) is
# gone, and the slot releaser can give its shadow slot back within seconds.
RESPONDER_SYNACK_RETRIES = 2


@dataclass
class ResponderSide:
    host_veth: str            # host end: the reply program runs on its ingress
    host_ifindex: int
    responder_mac: str        # responder end's MAC: requests must carry it as destination
    host_mac: str             # host end's MAC: used to answer ARP
    netns_name: str | None    # None: the responder end lives in the host namespace


@contextmanager
def entered_netns(name: str | None):
    """Run the body with this thread inside netns `name` (None: stay where we are)."""
    if name is None:
        yield
        return
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        setns_net(target)
        try:
            yield
        finally:
            setns_net(own)
    finally:
        os.close(target)
        os.close(own)


def listening_socket(netns_name: str | None, backlog: int = LISTEN_BACKLOG,
                     reuse_port: bool = False) -> socket.socket:
    """A TCP socket on 169.254.169.254:80 created inside the responder namespace.

    A socket stays in the namespace it was created in, so the caller can serve it from
    anywhere (several workers may share the port with SO_REUSEPORT).
    """
    with entered_netns(netns_name):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((METADATA_IP, METADATA_PORT))
        sock.listen(backlog)
        sock.setblocking(False)
    return sock


def _mac(ipr: IPRoute | NetNS, ifindex: int) -> str:
    return ipr.get_links(ifindex)[0].get_attr("IFLA_ADDRESS")


def remove(ipr: IPRoute, names: DaemonNames) -> None:
    """Delete our veth pair (deleting the host end takes both) and our namespace.

    Only devices named after this daemon are touched: a foreign `md1` stays.
    """
    for idx in ipr.link_lookup(ifname=names.host_veth):
        try:
            ipr.link("del", index=idx)
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:
                raise
    if not names.own_responder_netns:
        # A stale responder end of ours can outlive its peer only if someone moved it.
        for idx in ipr.link_lookup(ifname=names.responder_veth):
            ipr.link("del", index=idx)
    netns_name = names.responder_netns
    if netns_name and Path(f"/var/run/netns/{netns_name}").exists():
        netns.remove(netns_name)


def create(ipr: IPRoute, names: DaemonNames, shadow_prefix: str) -> ResponderSide:
    """Build the veth pair from scratch (a stale pair from a crashed run is removed first)."""
    remove(ipr, names)
    netns_name = names.responder_netns
    responder_veth = names.responder_veth
    if netns_name:
        netns.create(netns_name)
        peer = {"ifname": responder_veth, "net_ns_fd": netns_name}
    else:
        peer = {"ifname": responder_veth}
    ipr.link("add", ifname=names.host_veth, kind="veth", peer=peer)
    host_ifindex = ipr.link_lookup(ifname=names.host_veth)[0]
    # NOARP: the host end must never ARP for shadow addresses (the stack would stall).
    ipr.link("set", index=host_ifindex, state="up", arp=False)
    _disable_ipv6(names.host_veth, None)

    side_ipr = NetNS(netns_name) if netns_name else ipr
    try:
        peer_idx = side_ipr.link_lookup(ifname=responder_veth)[0]
        side_ipr.link("set", index=peer_idx, state="up", arp=False)
        side_ipr.addr("add", index=peer_idx, address=METADATA_IP, prefixlen=32)
        net, plen = shadow_prefix.split("/")
        # Through one (never resolved) next hop: a route straight out of a NOARP device
        # makes a neighbour entry per destination, one per guest identity, in the kernel's
        # ARP table that every namespace shares (1,024 entries before it refuses more by
        # default): past a thousand guests, replies to new ones were dropped. The
        # prefix's network address is no guest's (slot 0 means none).
        side_ipr.route("add", dst=net, dst_len=int(plen), gateway=net, oif=peer_idx,
                       flags=RTNH_F_ONLINK)
        if netns_name:
            lo = side_ipr.link_lookup(ifname="lo")[0]
            side_ipr.link("set", index=lo, state="up")
        responder_mac = _mac(side_ipr, peer_idx)
    finally:
        if side_ipr is not ipr:
            side_ipr.close()
    _disable_ipv6(responder_veth, netns_name)
    shorten_synack_retries(netns_name)
    return ResponderSide(
        host_veth=names.host_veth,
        host_ifindex=host_ifindex,
        responder_mac=responder_mac,
        host_mac=_mac(ipr, host_ifindex),
        netns_name=netns_name,
    )


def _disable_ipv6(ifname: str, netns_name: str | None) -> None:
    """No IPv6 chatter (router solicitations, DAD) on the responder link."""
    with entered_netns(netns_name):
        path = Path(f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6")
        if path.exists():
            path.write_text("1\n")


def shorten_synack_retries(netns_name: str | None) -> None:
    """Lower net.ipv4.tcp_synack_retries in the responder's own namespace; never in the
    host's (netns_name None): there it would change every service of the host."""
    if netns_name is None:
        return
    with entered_netns(netns_name):
        Path("/proc/sys/net/ipv4/tcp_synack_retries").write_text(
            f"{RESPONDER_SYNACK_RETRIES}\n")
