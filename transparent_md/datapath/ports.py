"""Following the bridges: attach to every port now and to every port that appears later.

A netlink listener sees ports join (a VM starting) and leave; a periodic full resync
covers anything the event stream dropped. Each port gets our tc filter plus its entries
in the maps (its bridge/name for identity, its proxy-ARP gateway addresses), and fresh
per-port limits (identity and MAC-lock counts, SYN bucket); a port that goes releases
its MAC locks.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from pyroute2 import IPRoute
from pyroute2.netlink import NETLINK_ROUTE
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTMGRP_LINK
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

from transparent_md.datapath import layout, programs, tc
from transparent_md.datapath.bpf_syscall import BpfMap
from transparent_md.datapath.port_limits import PortLimits
from transparent_md.datapath.port_selection import (
    PortSelection,
    link_kind,
    matching_bridges,
    selected_port,
    selected_ports,
)
from transparent_md.process import start_thread

log = logging.getLogger(__name__)

# A full resync of bridge membership this often, in case events went missing without an
# ENOBUFS (which resyncs at once). Events alone keep up otherwise, and a full re-read
# is costly on big hosts: with 1,000 ports about 0.3 s of Python holding the GIL, which
# the serving loop in the same process then waits for at every system call.
RESYNC_INTERVAL_S = 600.0
# How long the listener waits for events before checking for stop/resync.
POLL_INTERVAL_S = 0.2
# Room for a burst of link events (many VMs starting at once) between two reads.
EVENT_BUFFER_BYTES = 1 << 20


@dataclass(frozen=True)
class PortInfo:
    ifindex: int
    name: str
    bridge: str


class PortHook(Protocol):
    """What a datapath does to a port it takes or lets go (tc: its filter; raw: a socket)."""

    def attach(self, ipr: IPRoute, info: PortInfo) -> None: ...

    def detach(self, ipr: IPRoute, info: PortInfo) -> None: ...


@dataclass(frozen=True)
class TcHook:
    """The tc datapath's: our filter at our position on the port's ingress."""

    prog_fd: int
    position: tc.FilterPosition

    def attach(self, ipr: IPRoute, info: PortInfo) -> None:
        tc.attach(ipr, info.ifindex, self.prog_fd, programs.PORT_PROGRAM, self.position)

    def detach(self, ipr: IPRoute, info: PortInfo) -> None:
        tc.detach(ipr, info.ifindex, self.position)


@dataclass(frozen=True)
class GatewayRule:
    """Answer ARP (an IPv4 `ip`) or Neighbour Solicitations (an IPv6 `ip`) for `ip` on
    the ports of bridge `target`, or on the port `target`."""

    target: str
    ip: str


def _link_now(ipr: IPRoute, ifindex: int):
    """The link as the kernel has it now (an RTM_NEWLINK message), or None if gone."""
    try:
        links = ipr.get_links(ifindex)
    except NetlinkError:
        return None
    return links[0] if links else None


class PortAttacher:
    """Attaches the port program to bridge ports and keeps the per-port maps in step."""

    def __init__(
        self,
        selection: PortSelection,
        port_prog_fd: int,
        ports_map: BpfMap,
        arp_map: BpfMap,
        gateways: Iterable[GatewayRule],
        position: tc.FilterPosition,
        limits: PortLimits | None = None,
        nd_map: BpfMap | None = None,
        hook: PortHook | None = None,
    ) -> None:
        self.selection = selection
        self.port_prog_fd = port_prog_fd
        self.ports_map = ports_map
        self.arp_map = arp_map
        self.nd_map = nd_map
        self.gateways = list(gateways)
        self.position = position
        self.limits = limits
        self.hook = hook or TcHook(port_prog_fd, position)
        self.attached: dict[int, PortInfo] = {}
        # Called with {ifindex: name} whenever the attached set changed (for port_state).
        self.on_change: Callable[[dict[int, str]], None] | None = None
        self._bridge_names: dict[int, str] = {}  # bridge ifindex -> name, as of last sync
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- membership ---------------------------------------------------------------
    def current_ports(self, ipr: IPRoute) -> dict[int, PortInfo]:
        """Selected ports of our bridges right now (see port_selection)."""
        self._bridge_names = matching_bridges(ipr, self.selection)
        return {ifindex: PortInfo(ifindex, name, bridge) for ifindex, (name, bridge)
                in selected_ports(ipr, self.selection, self._bridge_names).items()}

    def sync(self, ipr: IPRoute) -> None:
        """Attach new members, forget ports that left."""
        with self._lock:
            wanted = self.current_ports(ipr)
            for ifindex, info in wanted.items():
                if self.attached.get(ifindex) != info:
                    self._attach(ipr, info)
            for ifindex in list(self.attached):
                if ifindex not in wanted:
                    self._forget(ipr, self.attached[ifindex])

    def on_link_event(self, ipr: IPRoute, msg) -> None:
        """Act on one RTM_NEWLINK/RTM_DELLINK: attach a new member, forget a leaver."""
        name = msg.get_attr("IFLA_IFNAME")
        ifindex = msg["index"]
        if ifindex in self._bridge_names or (
                self.selection.bridge_matches(name) and link_kind(msg) == "bridge"):
            self.sync(ipr)  # a bridge itself came, went or changed: re-read everything
            return
        with self._lock:
            known = self.attached.get(ifindex)
            bridge = self._bridge_names.get(msg.get_attr("IFLA_MASTER"))
            if bridge is not None and msg["event"] != "RTM_DELLINK" and not known:
                kind = link_kind(msg)
                if kind is None and msg.get_attr("IFLA_LINKINFO") is None:
                    link = _link_now(ipr, ifindex)  # a bridge-family event carries none
                    kind = link_kind(link) if link is not None else None
                if not self.selection.wants_port(name, kind):
                    bridge = None  # an uplink or an excluded port: not ours
            if msg["event"] == "RTM_DELLINK" or bridge is None:
                # Deleted, or not (any longer) a member of one of our bridges. A DELLINK
                # of the AF_BRIDGE family only means "left the bridge": same outcome.
                if known:
                    self._leave_if_gone(ipr, known)
                return
            info = PortInfo(ifindex, name or (known.name if known else ""), bridge)
            if known != info and info.name:
                self._attach(ipr, info)

    def _leave_if_gone(self, ipr: IPRoute, known: PortInfo) -> None:
        """Forget `known` only if the kernel says it left. Events queue while a sync
        reads the kernel directly, so one can predate what is attached: a new bridge's
        sync attaches its port, then the port's own creation event (no master yet)
        arrives. Trusting it cut the guest off and released its MAC locks for a moment."""
        link = _link_now(ipr, known.ifindex)
        selected = (selected_port(link, self.selection, self._bridge_names)
                    if link is not None else None)
        if selected is None:
            self._forget(ipr, known)
        elif (now := PortInfo(known.ifindex, *selected)) != known:
            self._attach(ipr, now)

    def _gateway_ips(self, info: PortInfo) -> list[str]:
        return [g.ip for g in self.gateways if g.target in (info.bridge, info.name)]

    def _answer(self, ifindex: int, ip: str, on: bool) -> None:
        """Start (or stop) answering for gateway `ip` on port `ifindex`: ARP for IPv4,
        Neighbour Solicitations for IPv6."""
        if ":" in ip:
            if self.nd_map is None:
                return
            target, key = self.nd_map, layout.nd_key(ifindex, ip)
        else:
            target, key = self.arp_map, layout.ArpKey(ifindex, layout.be32(ip))
        if on:
            target.update(key, ctypes.c_uint8(1))
        else:
            target.delete(key)

    def _attach(self, ipr: IPRoute, info: PortInfo) -> None:
        previous = self.attached.get(info.ifindex)
        if previous is not None:  # moved to another of our bridges: its gateways go
            for ip in set(self._gateway_ips(previous)) - set(self._gateway_ips(info)):
                self._answer(info.ifindex, ip, False)
        # Maps first: identity must be complete when the first request arrives.
        self.ports_map.update(
            ctypes.c_uint32(info.ifindex),
            layout.Port(info.bridge.encode(), info.name.encode()),
        )
        for ip in self._gateway_ips(info):
            self._answer(info.ifindex, ip, True)
        if self.limits is not None:
            self.limits.reset(info.ifindex)
        try:
            self.hook.attach(ipr, info)
        except (NetlinkError, OSError) as exc:
            code = exc.code if isinstance(exc, NetlinkError) else exc.errno
            if code in (errno.ENODEV, errno.ENOENT, errno.ENXIO):
                log.info("port %s vanished while attaching; skipped", info.name)
                self._drop_map_entries(info)
                return
            raise
        self.attached[info.ifindex] = info
        self._changed()
        log.info("attached to %s on bridge %s (ifindex %d)", info.name, info.bridge, info.ifindex)

    def _forget(self, ipr: IPRoute, info: PortInfo) -> None:
        # The device may be gone (its filters went with it) or just out of the bridge.
        self.hook.detach(ipr, info)
        self._drop_map_entries(info)
        self.attached.pop(info.ifindex, None)
        self._changed()
        log.info("forgot port %s (ifindex %d)", info.name, info.ifindex)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change({i: p.name for i, p in self.attached.items()})

    def _drop_map_entries(self, info: PortInfo) -> None:
        self.ports_map.delete(ctypes.c_uint32(info.ifindex))
        for ip in self._gateway_ips(info):
            self._answer(info.ifindex, ip, False)
        if self.limits is not None:
            self.limits.forget(info.ifindex)

    def reconfigure(self, ipr: IPRoute, selection: PortSelection,
                    gateways: Iterable[GatewayRule]) -> None:
        """New bridges/port selection/gateways (a reload): ports that stay keep their
        filter untouched; only their gateway ARP entries change, then membership syncs."""
        gateways = list(gateways)
        with self._lock:
            for info in self.attached.values():
                old = set(self._gateway_ips(info))
                new = {g.ip for g in gateways if g.target in (info.bridge, info.name)}
                for ip in new - old:
                    self._answer(info.ifindex, ip, True)
                for ip in old - new:
                    self._answer(info.ifindex, ip, False)
            self.gateways = gateways
            self.selection = selection
        self.sync(ipr)

    def restore_filter(self, ipr: IPRoute, ifindex: int) -> PortInfo | None:
        """Put our filter back on an attached port (someone deleted or replaced it)."""
        with self._lock:
            info = self.attached.get(ifindex)
            if info is None:
                return None
            self.hook.attach(ipr, info)
            return info

    def detach_all(self, ipr: IPRoute) -> None:
        with self._lock:
            for info in list(self.attached.values()):
                self._forget(ipr, info)

    # -- following ----------------------------------------------------------------
    def follow(self) -> None:
        """Start the background listener (a thread with its own netlink sockets)."""
        self._thread = start_thread("port-follower", self._run)

    def stop_following(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        # A plain netlink socket, parsed by pyroute2's marshal: select() on it is exact
        # (pyroute2's own IPRoute buffers messages where select() cannot see them).
        events = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        events.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, EVENT_BUFFER_BYTES)
        events.bind((0, RTMGRP_LINK))
        marshal = MarshalRtnl()
        commands = IPRoute()
        try:
            next_sync = time.monotonic() + RESYNC_INTERVAL_S
            while not self._stop.is_set():
                ready, _, _ = select.select([events], [], [], POLL_INTERVAL_S)
                try:
                    if ready:
                        for msg in marshal.parse(events.recv(EVENT_BUFFER_BYTES)):
                            if msg.get("event") in ("RTM_NEWLINK", "RTM_DELLINK"):
                                self.on_link_event(commands, msg)
                    if time.monotonic() >= next_sync:
                        next_sync = time.monotonic() + RESYNC_INTERVAL_S
                        self.sync(commands)
                except OSError as exc:
                    # ENOBUFS: events were lost; a full resync catches up.
                    log.warning("port follower: %s; resyncing", exc)
                    next_sync = 0.0
                except Exception:  # keep following; the next resync retries
                    log.exception("port follower failed; resyncing")
                    next_sync = time.monotonic() + POLL_INTERVAL_S
        finally:
            events.close()
            commands.close()
