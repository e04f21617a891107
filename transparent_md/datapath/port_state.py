"""Which ports this daemon has its filter on, kept in /run so a restart can tidy up.

A daemon that is killed and started again with fewer bridges would otherwise leave its
old filter on the ports it no longer serves. The file lists (ifindex, name) of every
attached port; on start, recorded ports that still carry the same name but are not
ours any more lose our filter (our priority/handle only).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pyroute2 import IPRoute

from transparent_md.datapath import tc


def forget(path: Path) -> None:
    """After a clean stop: nothing of ours is left on any port."""
    path.unlink(missing_ok=True)
    for directory in (path.parent, path.parent.parent):
        try:
            directory.rmdir()  # only if empty: another daemon may keep its own
        except OSError:
            break


def save(path: Path, ports: dict[int, str]) -> None:
    """Write {ifindex: name} atomically: a crash mid-write leaves the old list."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({str(i): n for i, n in ports.items()}))
    os.replace(tmp, path)


def load(path: Path) -> dict[int, str]:
    try:
        return {int(i): n for i, n in json.loads(path.read_text()).items()}
    except (OSError, ValueError, AttributeError):
        return {}


def detach_leftovers(ipr: IPRoute, recorded: dict[int, str], current: dict[int, str],
                     position: tc.FilterPosition) -> list[str]:
    """Remove our filter from recorded ports we no longer serve; names of those cleaned."""
    cleaned = []
    for ifindex, name in recorded.items():
        if ifindex in current:
            continue
        links = ipr.get_links(ifindex) if ipr.link_lookup(index=ifindex) else []
        if not links or links[0].get_attr("IFLA_IFNAME") != name:
            continue  # gone (its filters went with it) or the index now names another port
        if tc.detach(ipr, ifindex, position):
            cleaned.append(name)
    return cleaned
