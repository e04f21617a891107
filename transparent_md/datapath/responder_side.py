"""The responder's side of the datapath: a veth pair and, by default, its own namespace.

    host netns:      md0 (tc ingress: md_ingress)   <- requests are redirected out of it
    responder netns: md1 = 169.254.169.254/32, route <shadow prefix> dev md1, arp off

Keeping 169.254.169.254 inside a namespace of its own leaves the host's own route to an
upstream metadata service (a hypervisor that is itself a cloud VM) untouched.
`--responder-netns none` puts md1 in the host namespace instead: the host then answers
169.254.169.254 itself.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import IPRoute, NetNS, netns
from pyroute2.netlink.exceptions import NetlinkError

METADATA_IP = "169.254.169.254"
METADATA_PORT = 80
RESPONDER_IFNAME = "md1"
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


@dataclass
class ResponderSide:
    md_ifname: str            # host end (md0)
    md_ifindex: int
    peer_mac: str             # md1's MAC: requests must carry it as destination
    md_mac: str               # md0's MAC: used to answer ARP
    netns_name: str | None    # None: md1 lives in the host namespace


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextmanager
def entered_netns(name: str | None):
    """Run the body with this thread inside netns `name` (None: stay where we are)."""
    if name is None:
        yield
        return
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(target)
        os.close(own)


def listening_socket(netns_name: str | None, backlog: int = 4096,
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


def remove(ipr: IPRoute, md_ifname: str, netns_name: str | None) -> None:
    """Delete the veth pair (both ends go together) and our namespace, if present."""
    for idx in ipr.link_lookup(ifname=md_ifname):
        try:
            ipr.link("del", index=idx)
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:
                raise
    if netns_name and Path(f"/var/run/netns/{netns_name}").exists():
        netns.remove(netns_name)


def create(ipr: IPRoute, md_ifname: str, netns_name: str | None,
           shadow_prefix: str) -> ResponderSide:
    """Build md0/md1 from scratch (a stale pair from a crashed run is removed first)."""
    remove(ipr, md_ifname, netns_name)
    if netns_name:
        netns.create(netns_name)
        peer = {"ifname": RESPONDER_IFNAME, "net_ns_fd": netns_name}
    else:
        peer = {"ifname": RESPONDER_IFNAME}
        for idx in ipr.link_lookup(ifname=RESPONDER_IFNAME):
            ipr.link("del", index=idx)
    ipr.link("add", ifname=md_ifname, kind="veth", peer=peer)
    md_ifindex = ipr.link_lookup(ifname=md_ifname)[0]
    # NOARP: the host end must never ARP for shadow addresses (the stack would stall).
    ipr.link("set", index=md_ifindex, state="up", arp=False)
    _disable_ipv6(md_ifname, None)

    side_ipr = NetNS(netns_name) if netns_name else ipr
    try:
        peer_idx = side_ipr.link_lookup(ifname=RESPONDER_IFNAME)[0]
        side_ipr.link("set", index=peer_idx, state="up", arp=False)
        side_ipr.addr("add", index=peer_idx, address=METADATA_IP, prefixlen=32)
        net, plen = shadow_prefix.split("/")
        side_ipr.route("add", dst=net, dst_len=int(plen), oif=peer_idx)
        if netns_name:
            lo = side_ipr.link_lookup(ifname="lo")[0]
            side_ipr.link("set", index=lo, state="up")
        peer_mac = _mac(side_ipr, peer_idx)
    finally:
        if side_ipr is not ipr:
            side_ipr.close()
    _disable_ipv6(RESPONDER_IFNAME, netns_name)
    return ResponderSide(
        md_ifname=md_ifname,
        md_ifindex=md_ifindex,
        peer_mac=peer_mac,
        md_mac=_mac(ipr, md_ifindex),
        netns_name=netns_name,
    )


def _disable_ipv6(ifname: str, netns_name: str | None) -> None:
    """No IPv6 chatter (router solicitations, DAD) on the responder link."""
    with entered_netns(netns_name):
        path = Path(f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6")
        if path.exists():
            path.write_text("1\n")
