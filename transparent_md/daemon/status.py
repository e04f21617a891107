"""What a running daemon reports about itself, for `transparent-md status` (and its API).

The daemon rewrites `status.json` (mode 0600) in its state directory every couple of
seconds from a background thread; `status` reads it, after checking the daemon's lock
is held, so a stale file from a dead daemon is never shown as live.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable

from transparent_md import __version__
from transparent_md.datapath.datapath import Datapath
from transparent_md.lockfile import holder_pid, is_held
from transparent_md.names import DaemonNames
from transparent_md.periodic import Periodic

log = logging.getLogger(__name__)

# Fresh enough for a human or a check script; cheap (the filter state is the guard's).
WRITE_INTERVAL_S = 2.0


def collect(datapath: Datapath, started: float, extra: Callable[[], dict]) -> dict:
    """The daemon's state now: version, uptime, bridges, ports and their filter, counts."""
    ports = []
    attacher, guard = datapath.attacher, datapath.guard
    if attacher is not None and guard is not None:
        missing = guard.missing_now  # as the guard last found it: no dump per port here
        for info in sorted(list(attacher.attached.values()), key=lambda p: p.name):
            ports.append({"name": info.name, "bridge": info.bridge, "ifindex": info.ifindex,
                          "filter": "missing" if info.name in missing else "ok"})
    return {
        "version": __version__,
        "pid": os.getpid(),
        "name": datapath.names.name,
        "uptime_s": round(time.time() - started, 1),
        "bridges": list(datapath.config.bridges),
        "ports": ports,
        "filters_restored": guard.restored if guard else 0,
        **extra(),
        "written_at": time.time(),
    }


class StatusWriter:
    """Background thread keeping `<state dir>/status.json` current."""

    def __init__(self, names: DaemonNames, snapshot: Callable[[], dict],
                 interval_s: float = WRITE_INTERVAL_S) -> None:
        self.path = names.state_dir / "status.json"
        self.snapshot = snapshot
        self._periodic = Periodic("status", interval_s, lambda _: self.write_once(),
                                  first_round_at_once=True, logger=log)

    def write_once(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(self.snapshot(), handle)
        os.replace(tmp, self.path)

    def start(self) -> None:
        self._periodic.start()

    def stop(self) -> None:
        self._periodic.stop()
        self.path.unlink(missing_ok=True)


def read(names: DaemonNames) -> dict | None:
    """The status a live daemon wrote, or None when no daemon of that name runs here."""
    if not is_held(names.lock_file):
        return None
    try:
        status = json.loads((names.state_dir / "status.json").read_text())
    except (OSError, ValueError):
        status = {"pid": holder_pid(names.lock_file), "starting": True}
    return status


def render(status: dict) -> str:
    """The human form `transparent-md status` prints."""
    from transparent_md.daemon.store_source import render_store_line

    lines = [
        f"transparent-md {status.get('version', '?')}, daemon {status.get('name', '?')!r} "
        f"(pid {status.get('pid', '?')}), up {status.get('uptime_s', 0):.0f} s",
        f"bridges: {', '.join(status.get('bridges', [])) or '-'}",
        f"records: {status.get('records', '?')}; identities in use: "
        f"{status.get('identities_in_use', '?')}; open connections: "
        f"{status.get('open_connections', '?')}",
        f"datapath: {status.get('datapath_kind', '?')} ({status.get('datapath_reason', '')})",
        f"ports ({len(status.get('ports', []))}):",
    ]
    store_line = render_store_line(status)  # fleet store: connected, revision, lag
    if store_line:
        lines.insert(3, store_line)
    for port in status.get("ports", []):
        lines.append(f"  {port['name']:<15} bridge {port['bridge']:<15} filter {port['filter']}")
    lines += [f"DEGRADED: {reason}" for reason in status.get("degraded", [])]
    problems = status.get("recent_problems", [])
    lines.append(f"recent problems ({len(problems)}):")
    for problem in problems[-10:]:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(problem["time"]))
        lines.append(f"  {when} {problem['level']}: {problem['message']}")
    return "\n".join(lines)
