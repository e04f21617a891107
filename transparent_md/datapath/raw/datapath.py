"""The raw-socket datapath as one object: start() builds it, stop() undoes it.

It is the tc datapath with another way of catching frames: the same bridge checks,
port selection and follower, responder veth pair, shadow slots, per-port limits and
counters (in shared tables instead of BPF maps), so `Daemon`, identity, the slot
releaser, metrics and `status` use it unchanged. What differs:

    tc program on each port      -> a packet socket per port (raw.pump) + the
                                    nftables bridge table (raw.nft_table)
    tc program on the md veth    -> a packet socket there + a netdev ingress drop
    pinned maps                  -> shared table files (datapath.tables)
    filter guard                 -> TableGuard: the nftables table put back if changed
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pyroute2 import IPRoute, NetNS

from transparent_md.datapath import locks, ownership, responder_side, tables
from transparent_md.datapath.datapath import Datapath, DatapathConfig
from transparent_md.datapath.ports import PortInfo
from transparent_md.datapath.raw import packet_socket, socket_filter
from transparent_md.datapath.raw.admission import Admission
from transparent_md.datapath.raw.nft_table import NftTables
from transparent_md.datapath.raw.pump import Pump
from transparent_md.errors import UserError
from transparent_md.periodic import Periodic

log = logging.getLogger(__name__)

# The responder's veth carries whole GSO frames a guest sends (its MTU could otherwise
# refuse them), and the responder sends segments no larger than one MSS (a larger one
# could not go out of a guest's port as one frame).
RESPONDER_LINK_MTU = 65000
RESPONDER_GSO_MAX_SEGS = 1
# How often the nftables tables are checked (one listing of two small tables).
GUARD_INTERVAL_S = 1.0
# The responder's least retransmission timeout, in its own namespace (the kernel's is
# 200 ms). Frames wait in the pump's queues during a boot storm longer than that: the
# responder then resent segments that were only queued, each resend one more frame for
# the pump (35,738 of them in a 1,000-guest storm), and the storm fed on itself.
RESPONDER_RTO_MIN_US = 1_000_000


def lengthen_rto_min(netns_name: str | None) -> None:
    """net.ipv4.tcp_rto_min_us in the responder's own namespace; never in the host's
    (netns_name None: there it would change every service of the host)."""
    if netns_name is None:
        return
    setting = Path("/proc/sys/net/ipv4/tcp_rto_min_us")
    with responder_side.entered_netns(netns_name):
        if setting.exists():  # kernels before 6.11 have none: the route default stays
            setting.write_text(f"{RESPONDER_RTO_MIN_US}\n")


def prepare_responder_link(ipr: IPRoute, side: responder_side.ResponderSide,
                           responder_veth: str) -> None:
    """Both ends of the veth pair: a large MTU, and no multi-segment sends."""
    ipr.link("set", index=side.host_ifindex, mtu=RESPONDER_LINK_MTU)
    other = NetNS(side.netns_name) if side.netns_name else ipr
    try:
        peer = other.link_lookup(ifname=responder_veth)[0]
        other.link("set", index=peer, mtu=RESPONDER_LINK_MTU,
                   gso_max_segs=RESPONDER_GSO_MAX_SEGS)
    finally:
        if other is not ipr:
            other.close()


class RawPortHook:
    """What attaching a port means here: a filtered packet socket and the port's name in
    the nftables set of judged ports."""

    def __init__(self, datapath: RawDatapath) -> None:
        self.datapath = datapath
        # The name each port is in the nftables set under: a renamed port leaves its
        # old name behind, which another device could take.
        self._names: dict[int, str] = {}

    def attach(self, ipr: IPRoute, info: PortInfo) -> None:
        sock = packet_socket.open_bound(info.ifindex, self.datapath.port_program())
        self.datapath.pump.add_port(info.ifindex, sock)
        old = self._names.get(info.ifindex)
        if old is not None and old != info.name:
            self.datapath.nft.remove_port(old)
        self.datapath.nft.add_port(info.name, self.datapath.gateways_of(info))
        self._names[info.ifindex] = info.name

    def detach(self, ipr: IPRoute, info: PortInfo) -> None:
        self.datapath.nft.remove_port(self._names.pop(info.ifindex, info.name))
        self.datapath.pump.remove_port(info.ifindex)


class TableGuard:
    """Puts the nftables tables back when someone deletes or changes them (the tc
    datapath's FilterGuard has the same face: missing_now, restored, missing())."""

    def __init__(self, datapath: RawDatapath) -> None:
        self.datapath = datapath
        self.restored = 0
        self.missing_now: set[str] = set()
        self._periodic = Periodic("nft-guard", GUARD_INTERVAL_S, lambda _: self.check_once(),
                                  logger=log)

    def missing(self, ipr: IPRoute | None = None) -> list[str]:
        if self.datapath.nft.intact():
            return []
        attacher = self.datapath.attacher
        return sorted(p.name for p in attacher.attached.values()) if attacher else []

    def check_once(self) -> None:
        if self.datapath.nft.intact():
            self.missing_now = set()
            return
        self.missing_now = set(self.missing())
        log.warning("the nftables table %s was changed or removed; putting it back",
                    self.datapath.nft.name)
        with self.datapath.attacher_lock():
            self.datapath.nft.install()
        self.restored += 1
        self.missing_now = set()

    def start(self) -> None:
        self._periodic.start()

    def stop(self) -> None:
        self._periodic.stop()


class RawDatapath(Datapath):
    kind = "raw"

    def __init__(self, config: DatapathConfig) -> None:
        super().__init__(config)
        self.nft: NftTables | None = None
        self.pump: Pump | None = None
        self.admission: Admission | None = None

    @property
    def table_dir(self):
        return tables.raw_directory(self.names)

    def attacher_lock(self):
        return self.attacher._lock if self.attacher else _NoLock()

    def _watched_ips(self) -> list[str]:
        return [g.ip for g in self.config.gateways]

    def port_program(self) -> list[tuple[int, int, int, int]]:
        return socket_filter.port_program(self._watched_ips())

    def gateways_of(self, info: PortInfo) -> list[str]:
        """The gateway addresses answered on this port (as the attacher's ARP entries)."""
        return [g.ip for g in self.config.gateways if g.target in (info.bridge, info.name)]

    def _start(self) -> None:
        if os.geteuid() != 0:
            raise UserError("must run as root: packet sockets, nftables and the responder's "
                            "devices need CAP_NET_ADMIN and CAP_NET_RAW")
        self._check_bridges()
        ownership.refuse_claimed(self.names,
                                 ownership.bridge_members(self.ipr, self.selection))
        leftover_locks = locks.leftover(self.table_dir)  # a `kill -9` left its tables
        self._maps = tables.create_raw_tables(self.table_dir)
        self.side = responder_side.create(self.ipr, self.names, str(self.shadow))
        prepare_responder_link(self.ipr, self.side, self.names.responder_veth)
        lengthen_rto_min(self.side.netns_name)
        self._write_config()

        self.nft = NftTables(self.names, self.config.answer_metadata_arp)
        self.nft.gateway_ips = set(self._watched_ips())
        self.nft.arp_mac = self.side.host_mac
        self.nft.install()  # replaces a table a killed run of ours left behind

        self.admission = Admission(self._maps)
        self.pump = Pump(self.admission, self._maps["tmd_arp"], self.side.responder_mac,
                         self.side.host_mac, self.config.answer_metadata_arp)
        self.pump.set_responder(packet_socket.open_bound(
            self.side.host_ifindex, socket_filter.reply_program(self.shadow),
            packet_socket.RESPONDER_RECEIVE_BYTES))
        self.pump.start()

        self._follow_ports(-1, RawPortHook(self), leftover_locks)
        self.guard = TableGuard(self)
        self.guard.start()
        log.info("datapath up (raw sockets): bridges %s, %d ports, responder netns %s",
                 ",".join(self.config.bridges), len(self.attacher.attached),
                 self.names.responder_netns)

    def reconfigure(self, bridges, include_ports, exclude_ports, gateways) -> None:
        super().reconfigure(bridges, include_ports, exclude_ports, gateways)
        if self.nft is None or self.pump is None:
            return
        with self.attacher_lock():
            self.nft.gateway_ips = set(self._watched_ips())
            self.nft.ports = {info.name: tuple(self.gateways_of(info))
                              for info in self.attacher.attached.values()}
            self.nft.install()
            program = self.port_program()
            for sock in self.pump.port_sockets().values():
                socket_filter.attach(sock, program)

    def stop(self) -> None:
        self._stop_ports()
        if self.pump:
            self.pump.stop()
            self.pump = None
        if self.nft:
            self.nft.remove()
            self.nft = None
        self._remove_responder_side()
        tables.remove_raw_tables(self.table_dir)
        if self.ipr:
            self.ipr.close()
            self.ipr = None


class _NoLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None

