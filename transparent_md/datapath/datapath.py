"""The whole datapath as one object: start() builds and attaches it, stop() undoes it.

start() rolls back everything it did if any step fails, so an error never leaves a
half-attached host behind.
"""

from __future__ import annotations

import ctypes
import ipaddress
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from transparent_md.datapath import (
    bpf_syscall,
    bpffs,
    contract,
    layout,
    locks,
    ownership,
    port_state,
    programs,
    responder_side,
    tc,
)
from transparent_md.datapath.bpf_syscall import BpfMap
from transparent_md.datapath.filter_guard import FilterGuard
from transparent_md.datapath.lock_keeper import LockKeeper
from transparent_md.datapath.port_limits import PortLimits
from transparent_md.datapath.port_selection import PortSelection
from transparent_md.datapath.ports import GatewayRule, PortAttacher, PortHook
from transparent_md.datapath.slot_release import DEFAULT_SLOT_REUSE_DELAY_S
from transparent_md.errors import UserError
from transparent_md.guest_limits import default
from transparent_md.names import DaemonNames

log = logging.getLogger(__name__)

NS_PER_S = 1_000_000_000

DEFAULT_SHADOW_PREFIX = "100.64.0.0/10"
# The per-port limits, declared (with why) in transparent_md.guest_limits.
DEFAULT_PORT_IDENTITY_QUOTA = int(default("port_identity_quota"))
DEFAULT_PORT_MAC_QUOTA = int(default("port_mac_quota"))
DEFAULT_PORT_SYN_RATE = int(default("port_syn_rate"))
DEFAULT_PORT_SYN_BURST = int(default("port_syn_burst"))


@dataclass
class DatapathConfig:
    bridges: list[str]  # names or globs
    # --port / --exclude-port globs (see port_selection: default tap/tun and veth only).
    include_ports: list[str] = field(default_factory=list)
    exclude_ports: list[str] = field(default_factory=list)
    # Devices, namespaces and pins, all derived from --name (see transparent_md.names).
    names: DaemonNames = field(default_factory=DaemonNames.here)
    shadow_prefix: str = DEFAULT_SHADOW_PREFIX
    gateways: list[GatewayRule] = field(default_factory=list)
    answer_metadata_arp: bool = True
    # Lock a MAC to the first port it asked from (see bpf/port_ingress.c).
    mac_lock: bool = True
    filter_position: tc.FilterPosition = field(default_factory=tc.FilterPosition)
    # Hostile-guest limits, per port; 0 disables each.
    port_identity_quota: int = DEFAULT_PORT_IDENTITY_QUOTA
    port_mac_quota: int = DEFAULT_PORT_MAC_QUOTA
    port_syn_rate: int = DEFAULT_PORT_SYN_RATE
    port_syn_burst: int = DEFAULT_PORT_SYN_BURST
    # A released slot waits this long before another identity may take it (longer than
    # the responder's identity cache: see slot_release).
    slot_reuse_delay_s: float = DEFAULT_SLOT_REUSE_DELAY_S
    # `run --datapath`: tc, raw or auto (see datapath.choice).
    datapath: str = "auto"


def shadow_network(prefix: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.IPv4Network(prefix)
    except ValueError as exc:
        raise UserError(f"--shadow-prefix {prefix!r}: {exc}") from exc
    if net.prefixlen > 30:
        raise UserError(f"--shadow-prefix {prefix}: needs at least 2 host bits (/30 or shorter)")
    return net


class TcUnavailable(UserError):
    """No tc program can be compiled or attached here (`--datapath auto` then runs raw)."""


class Datapath:
    """The tc datapath; the raw-socket one (datapath.raw.datapath) is its subclass and
    shares everything but how frames are caught. Above the datapath only `kind`,
    `table_dir` and the calls below are used, whichever runs."""

    kind = "tc"

    def __init__(self, config: DatapathConfig) -> None:
        self.config = config
        self.shadow = shadow_network(config.shadow_prefix)
        self.names = config.names
        self.pin_dir = self.names.pin_dir
        self.ipr: IPRoute | None = None
        self.programs: programs.PinnedPrograms | None = None
        self.side: responder_side.ResponderSide | None = None
        self.attacher: PortAttacher | None = None
        self.guard: FilterGuard | None = None
        self.keeper: LockKeeper | None = None
        self._maps: dict[str, BpfMap] = {}
        # Why this datapath runs (`--datapath` and, with auto, what was found): in the
        # start-up log and `status`.
        self.reason = ""

    @property
    def table_dir(self) -> Path:
        """Where the identity tables are (datapath.tables opens them by name)."""
        return self.pin_dir

    @property
    def shadow_slots(self) -> int:
        return min(layout.MAX_SLOTS - 1, self.shadow.num_addresses - 2)

    # -- start ----------------------------------------------------------------------
    def start(self) -> None:
        self.ipr = IPRoute()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        if os.geteuid() != 0:
            raise UserError("must run as root: attaching tc programs and creating the "
                            "responder's devices needs CAP_NET_ADMIN and CAP_BPF")
        self._check_bridges()
        # Before anything is built: another daemon's ports make this one refuse untouched.
        ownership.refuse_claimed(self.names,
                                 ownership.bridge_members(self.ipr, self.selection))
        try:
            bpffs.ensure_mounted()
        except (UserError, OSError) as exc:
            raise TcUnavailable(f"no BPF filesystem here: {exc}") from exc
        leftover_locks = locks.leftover(self.pin_dir)  # a `kill -9` left its pins
        bpffs.unpin(self.pin_dir)
        try:
            self.programs = programs.compile_and_pin(
                self.pin_dir, (f"-DTMD_MAX_SLOTS={layout.MAX_SLOTS}",)
            )
        except contract.ContractError:
            raise  # a broken install, not a host without BPF: auto must not hide it
        except UserError as exc:
            raise TcUnavailable(str(exc)) from exc
        self._maps = {m: BpfMap.from_pin(str(self.pin_dir / m)) for m in layout.ALL_MAPS}

        self.side = responder_side.create(self.ipr, self.names, str(self.shadow))
        try:
            tc.attach(self.ipr, self.side.host_ifindex, self.programs.md_fd,
                      programs.MD_PROGRAM, self.config.filter_position)
        except NetlinkError as exc:
            raise TcUnavailable(f"cannot attach a tc program here: {exc}") from exc
        self._write_config()
        self._follow_ports(self.programs.port_fd, None, leftover_locks)
        self.guard = FilterGuard(self.attacher, bpf_syscall.prog_id(self.programs.port_fd),
                                 self.config.filter_position)
        self.guard.start()
        log.info("datapath up: bridges %s, %d ports, responder netns %s",
                 ",".join(self.config.bridges), len(self.attacher.attached),
                 self.names.responder_netns)

    def _follow_ports(self, port_prog_fd: int, hook: PortHook | None,
                      leftover_locks: list) -> None:
        """Take the selected ports (tc: `hook` None, our filter; raw: its hook), with
        the MAC locks of the last run put back first, and follow the bridges."""
        self.keeper = LockKeeper(self.table_dir, self.names.locks_file)
        limits = self._port_limits()
        self.attacher = PortAttacher(
            self.selection, port_prog_fd, self._maps[layout.MAP_PORTS],
            self._maps[layout.MAP_ARP], self.config.gateways, self.config.filter_position,
            limits=limits, nd_map=self._maps.get(layout.MAP_ND), hook=hook,
        )
        state = self.names.ports_file
        recorded = port_state.load(state)
        # The MAC locks of the last run go back before the first port is attached: no
        # request may find a lock missing that the daemon had before it stopped.
        about_to_attach = {i: p.name for i, p in self.attacher.current_ports(self.ipr).items()}
        limits.restored_locks = self.keeper.restore(about_to_attach, leftover_locks)
        try:
            self.attacher.sync(self.ipr)
        finally:
            limits.restored_locks = None
        # A port that went between the two reads was put back a lock but not attached.
        limits.release_unattached(set(self.attacher.attached))
        current = {i: p.name for i, p in self.attacher.attached.items()}
        if hook is None:  # our tc filters a killed run left on ports no longer ours
            for name in port_state.detach_leftovers(self.ipr, recorded, current,
                                                    self.config.filter_position):
                log.info("removed our filter left on %s by an earlier run", name)
        port_state.save(state, current)
        self.attacher.on_change = lambda ports: port_state.save(state, ports)
        self.attacher.follow()
        self.keeper.start()

    @property
    def selection(self) -> PortSelection:
        return PortSelection(tuple(self.config.bridges), tuple(self.config.include_ports),
                             tuple(self.config.exclude_ports))

    def _check_bridges(self) -> None:
        if not self.config.bridges:
            raise UserError("no --bridge given: name at least one bridge to serve")
        for name in self.selection.exact_bridges():
            found = self.ipr.link_lookup(ifname=name)
            if not found:
                raise UserError(
                    f"bridge {name!r} does not exist in this network namespace "
                    f"(create it, e.g. `ip link add {name} type bridge`, or check the name)"
                )
            kind = self.ipr.get_links(found[0])[0].get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
            if kind != "bridge":
                raise UserError(f"{name!r} is a {kind or 'plain'} device, not a bridge")

    def _write_config(self) -> None:
        cfg = layout.Config()
        cfg.shadow_net = layout.be32(self.shadow.network_address)
        cfg.shadow_mask = layout.be32(self.shadow.netmask)
        cfg.md_ifindex = self.side.host_ifindex
        cfg.shadow_slots = self.shadow_slots
        cfg.md_mac[:] = layout.mac_bytes(self.side.responder_mac)
        cfg.arp_mac[:] = layout.mac_bytes(self.side.host_mac)
        cfg.flags = ((layout.CFG_ANSWER_METADATA_ARP if self.config.answer_metadata_arp else 0)
                     | (layout.CFG_MAC_LOCK if self.config.mac_lock else 0))
        limits = self.config
        if limits.slot_reuse_delay_s <= layout.IDENTITY_CACHE_TTL_S:
            raise UserError(f"slot reuse delay {limits.slot_reuse_delay_s} s must exceed the "
                            f"responder's identity cache ({layout.IDENTITY_CACHE_TTL_S} s)")
        cfg.port_identity_quota = limits.port_identity_quota
        cfg.port_mac_quota = limits.port_mac_quota
        if limits.port_syn_rate > 0 and limits.port_syn_burst > 0:
            cfg.syn_cost_ns = NS_PER_S // limits.port_syn_rate
            cfg.syn_burst_ns = cfg.syn_cost_ns * limits.port_syn_burst
        cfg.slot_reuse_delay_ns = int(limits.slot_reuse_delay_s * NS_PER_S)
        self._maps[layout.MAP_CONFIG].update(ctypes.c_uint32(0), cfg)

    def _port_limits(self) -> PortLimits:
        return PortLimits(self._maps[layout.MAP_PORT_USAGE], self._maps[layout.MAP_PORT_RELEASED],
                          self._maps[layout.MAP_MAC_LOCKS], self._maps[layout.MAP_BY_GUEST],
                          keeper=self.keeper)

    def reconfigure(self, bridges: list[str], include_ports: list[str],
                    exclude_ports: list[str], gateways: list[GatewayRule]) -> None:
        """Apply a reload: ports that stay selected are never detached, not even briefly."""
        previous = (self.config.bridges, self.config.include_ports,
                    self.config.exclude_ports, self.config.gateways)
        self.config.bridges, self.config.include_ports = bridges, include_ports
        self.config.exclude_ports, self.config.gateways = exclude_ports, gateways
        try:
            self._check_bridges()
        except UserError:
            (self.config.bridges, self.config.include_ports,
             self.config.exclude_ports, self.config.gateways) = previous
            raise
        if self.attacher and self.ipr:
            self.attacher.reconfigure(self.ipr, self.selection, gateways)

    def resync(self) -> None:
        """Re-read bridge membership now (the follower does this on events and every 10 min)."""
        if self.attacher and self.ipr:
            self.attacher.sync(self.ipr)

    # -- stop -----------------------------------------------------------------------
    def stop(self) -> None:
        """Detach our filters, remove our veth pair and responder namespace, unpin maps."""
        self._stop_ports()
        self._remove_responder_side()
        if self.programs:
            self.programs.close()
            self.programs = None
        bpffs.unpin(self.pin_dir)
        if self.ipr:
            self.ipr.close()
            self.ipr = None

    def _stop_ports(self) -> None:
        """Stop guarding and following, keep the MAC locks, let every port go."""
        if self.guard:
            self.guard.stop()
            self.guard = None
        if self.keeper:
            # Before the ports are let go: their locks are kept for the next run.
            self.keeper.close()
            self.keeper = None
        if self.attacher:
            self.attacher.stop_following()
            self.attacher.on_change = None
            self.attacher.detach_all(self.ipr)
            self.attacher = None
            port_state.forget(self.names.ports_file)

    def _remove_responder_side(self) -> None:
        """Remove our veth pair and responder namespace, close the tables."""
        if self.ipr:
            responder_side.remove(self.ipr, self.names)
        for table in self._maps.values():
            table.close()
        self._maps = {}

    # -- observation ----------------------------------------------------------------
    def stats(self) -> dict[str, dict[str, int]]:
        """Sums of the per-CPU counters by name: {"events": {...}, "drops": {reason: n}}."""
        def totals(map_name: str, names: type) -> dict[str, int]:
            counters = self._maps[map_name]
            return {n.name.lower(): sum(counters.lookup_percpu_u64(n.value)) for n in names}

        return {"events": totals(layout.MAP_EVENTS, layout.Event),
                "drops": totals(layout.MAP_DROPS, layout.Drop)}

    def slots_in_use(self) -> int:
        """Shadow slots held by identities now (one map walk; for the gauge)."""
        by_guest = self._maps.get(layout.MAP_BY_GUEST)
        return len(by_guest.keys(layout.GuestKey)) if by_guest else 0
