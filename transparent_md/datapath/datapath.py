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

from pyroute2 import IPRoute

from transparent_md.datapath import (
    bpf_syscall,
    bpffs,
    layout,
    ownership,
    port_state,
    programs,
    responder_side,
    tc,
)
from transparent_md.datapath.bpf_syscall import BpfMap
from transparent_md.datapath.filter_guard import FilterGuard
from transparent_md.datapath.ports import GatewayRule, PortAttacher
from transparent_md.errors import UserError
from transparent_md.names import DaemonNames

log = logging.getLogger(__name__)

DEFAULT_SHADOW_PREFIX = "100.64.0.0/10"
# Longer than the responder's idle timeout and any keep-alive burst: a slot seen this
# recently is never handed to another guest, so a late reply cannot reach the wrong one.
DEFAULT_SLOT_HOLD_S = 300.0


@dataclass
class DatapathConfig:
    bridges: list[str]
    # Devices, namespaces and pins, all derived from --name (see transparent_md.names).
    names: DaemonNames = field(default_factory=DaemonNames.here)
    shadow_prefix: str = DEFAULT_SHADOW_PREFIX
    gateways: list[GatewayRule] = field(default_factory=list)
    answer_metadata_arp: bool = True
    filter_position: tc.FilterPosition = field(default_factory=tc.FilterPosition)
    slot_hold_s: float = DEFAULT_SLOT_HOLD_S


def shadow_network(prefix: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.IPv4Network(prefix)
    except ValueError as exc:
        raise UserError(f"--shadow-prefix {prefix!r}: {exc}") from exc
    if net.prefixlen > 30:
        raise UserError(f"--shadow-prefix {prefix}: needs at least 2 host bits (/30 or shorter)")
    return net


class Datapath:
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
        self._maps: dict[str, BpfMap] = {}

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
        bpffs.ensure_mounted()
        bpffs.unpin(self.pin_dir)
        self.programs = programs.compile_and_pin(
            self.pin_dir, (f"-DTMD_MAX_SLOTS={layout.MAX_SLOTS}",)
        )
        self._maps = {m: BpfMap.from_pin(str(self.pin_dir / m)) for m in layout.ALL_MAPS}

        self.side = responder_side.create(self.ipr, self.names, str(self.shadow))
        tc.attach(self.ipr, self.side.host_ifindex, self.programs.md_fd, programs.MD_PROGRAM,
                  self.config.filter_position)
        self._write_config()

        self.attacher = PortAttacher(
            self.config.bridges, self.programs.port_fd, self._maps[layout.MAP_PORTS],
            self._maps[layout.MAP_ARP], self.config.gateways, self.config.filter_position,
        )
        state = self.names.ports_file
        recorded = port_state.load(state)
        wanted = self.attacher.current_ports(self.ipr)
        ownership.refuse_claimed(self.names, ((i, p.name) for i, p in wanted.items()))
        self.attacher.sync(self.ipr)
        current = {i: p.name for i, p in self.attacher.attached.items()}
        for name in port_state.detach_leftovers(self.ipr, recorded, current,
                                                self.config.filter_position):
            log.info("removed our filter left on %s by an earlier run", name)
        port_state.save(state, current)
        self.attacher.on_change = lambda ports: port_state.save(state, ports)
        self.attacher.follow()
        self.guard = FilterGuard(self.attacher, bpf_syscall.prog_id(self.programs.port_fd),
                                 self.config.filter_position)
        self.guard.start()
        log.info("datapath up: bridges %s, %d ports, responder netns %s",
                 ",".join(self.config.bridges), len(self.attacher.attached),
                 self.names.responder_netns)

    def _check_bridges(self) -> None:
        if not self.config.bridges:
            raise UserError("no --bridge given: name at least one bridge to serve")
        for name in self.config.bridges:
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
        cfg.flags = layout.CFG_ANSWER_METADATA_ARP if self.config.answer_metadata_arp else 0
        cfg.slot_hold_ns = int(self.config.slot_hold_s * 1e9)
        self._maps[layout.MAP_CONFIG].update(ctypes.c_uint32(0), cfg)

    def resync(self) -> None:
        """Re-read bridge membership now (the follower does this on events and every 30 s)."""
        if self.attacher and self.ipr:
            self.attacher.sync(self.ipr)

    # -- stop -----------------------------------------------------------------------
    def stop(self) -> None:
        """Detach our filters, remove our veth pair and responder namespace, unpin maps."""
        if self.guard:
            self.guard.stop()
            self.guard = None
        if self.attacher:
            self.attacher.stop_following()
            self.attacher.on_change = None
            self.attacher.detach_all(self.ipr)
            self.attacher = None
            port_state.forget(self.names.ports_file)
        if self.ipr:
            responder_side.remove(self.ipr, self.names)
        for pinned in self._maps.values():
            pinned.close()
        self._maps = {}
        if self.programs:
            self.programs.close()
            self.programs = None
        bpffs.unpin(self.pin_dir)
        if self.ipr:
            self.ipr.close()
            self.ipr = None

    # -- observation ----------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        """Sum of the per-CPU counters, by name."""
        counters = self._maps[layout.MAP_STATS]
        return {s.name.lower(): sum(counters.lookup_percpu_u64(s.value)) for s in layout.Stat}
