"""Which bridge ports another transparent-md daemon in this namespace already serves.

Every daemon records its ports in its state directory (see `port_state`) and holds its
lock file while alive. A port recorded by a live daemon of another `--name` is that
daemon's: attaching there would replace its filter and cut its guests off.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pyroute2 import IPRoute

from transparent_md.datapath import port_state
from transparent_md.datapath.port_selection import PortSelection, selected_ports
from transparent_md.errors import UserError
from transparent_md.lockfile import holder_pid, is_held
from transparent_md.names import STATE_ROOT, DaemonNames


@dataclass(frozen=True)
class OtherDaemon:
    name: str
    pid: int | None
    ports: dict[int, str]


def other_daemons(names: DaemonNames) -> list[OtherDaemon]:
    """Live daemons in this network namespace other than `names` itself."""
    found = []
    suffix = f"-{names.inode}"
    if not STATE_ROOT.is_dir():
        return found
    for directory in STATE_ROOT.iterdir():
        if not directory.name.endswith(suffix) or directory.name == names.daemon_id:
            continue
        theirs = DaemonNames(directory.name[: -len(suffix)], names.inode)
        if not is_held(theirs.lock_file):
            continue
        found.append(OtherDaemon(theirs.name, holder_pid(theirs.lock_file),
                                 port_state.load(theirs.ports_file)))
    return found


def bridge_members(ipr: IPRoute, selection: PortSelection) -> list[tuple[int, str]]:
    """(ifindex, name) of every port the selection would attach to now."""
    return [(i, name) for i, (name, _) in selected_ports(ipr, selection).items()]


def refuse_claimed(names: DaemonNames, ports: Iterable[tuple[int, str]]) -> None:
    """UserError naming the first of `ports` (ifindex, name) another live daemon serves."""
    others = other_daemons(names)
    for ifindex, port in ports:
        for other in others:
            if other.ports.get(ifindex) == port:
                raise UserError(
                    f"port {port} is already served by transparent-md daemon "
                    f"{other.name!r} (pid {other.pid or 'unknown'}); one daemon per port: "
                    "stop that one or serve other bridges"
                )
