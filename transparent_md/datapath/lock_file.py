"""The MAC locks and the ports waiting for them, kept in the state directory.

What the daemon learned about who owns a MAC must outlive the daemon process: without
this file a restart (SIGTERM or `kill -9`) would forget every lock, and a neighbour
copying an unbound record's MAC could take it before its owner asks again. A port is a
link, named by its ifindex in the daemon's network namespace and its name together:
Linux hands out ifindexes cyclically, so a link re-created with the same name has
another ifindex, and an ifindex that names another link now is not the same port.

The file is JSON, written atomically (a temporary file, fsync, rename): a crash while
writing leaves the previous version. A file that cannot be read is logged and ignored
(the daemon then starts with no locks, as it did before this file existed); an entry
no daemon writes (a bad MAC, ifindex or time) is dropped and the rest kept.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MAC_OCTETS = 6
# An ifindex is a positive 32-bit number; the lock map keeps it as a u32.
MAX_IFINDEX = 2**31 - 1
# Far past any clock this file meets, yet a difference with it still converts to
# nanoseconds in an integer.
LATEST_TIME = 2.0**40


@dataclass(frozen=True)
class PortLink:
    """A port as a link: its ifindex in our network namespace and its name then."""

    ifindex: int
    name: str


@dataclass(frozen=True)
class SavedLock:
    mac: str
    port: PortLink


@dataclass(frozen=True)
class SavedWaiter:
    """A port that asked for `mac` while it was locked to another port."""

    mac: str
    port: PortLink
    ip: str
    first_asked: float  # wall-clock time (time.time()) of its first refused request
    last_asked: float   # ... and of its latest


@dataclass(frozen=True)
class LockState:
    locks: tuple[SavedLock, ...] = ()
    waiting: tuple[SavedWaiter, ...] = ()


def save(path: Path, state: LockState) -> None:
    """Write `state` atomically (never a half-written file, even on a crash)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"version": FORMAT_VERSION,
            "locks": [_lock_json(lock) for lock in state.locks],
            "waiting": [_waiter_json(w) for w in state.waiting]}
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        json.dump(body, out, indent=1, sort_keys=True)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def load(path: Path) -> LockState:
    """What was saved; empty when there is no file or it cannot be read (logged)."""
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(body, dict) or body.get("version") != FORMAT_VERSION:
            raise ValueError(f"not a version {FORMAT_VERSION} lock file")
        locks = tuple(SavedLock(str(e["mac"]), _link(e)) for e in body.get("locks", ()))
        waiting = tuple(SavedWaiter(str(e["mac"]), _link(e), str(e["ip"]),
                                    float(e["first_asked"]), float(e["last_asked"]))
                        for e in body.get("waiting", ()))
    except FileNotFoundError:
        return LockState()
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("MAC lock file %s cannot be read (%s): starting with no MAC locks",
                    path, exc)
        return LockState()
    return _without_bad_entries(path, LockState(locks, waiting))


def _without_bad_entries(path: Path, state: LockState) -> LockState:
    """`state` less the entries no running daemon writes (a corrupted or hand-edited
    file): each would fail the restore before the first port is attached, and so keep
    every guest unanswered. The good locks are kept."""
    locks = tuple(lock for lock in state.locks
                  if _is_mac(lock.mac) and _is_link(lock.port))
    waiting = tuple(w for w in state.waiting
                    if _is_mac(w.mac) and _is_link(w.port)
                    and _is_time(w.first_asked) and _is_time(w.last_asked))
    dropped = len(state.locks) - len(locks) + len(state.waiting) - len(waiting)
    if dropped:
        log.warning("MAC lock file %s: %d entries with a bad MAC, port or time ignored",
                    path, dropped)
    return LockState(locks, waiting)


def _is_mac(mac: str) -> bool:
    parts = mac.split(":")
    return len(parts) == MAC_OCTETS and all(
        len(p) == 2 and all(c in "0123456789abcdefABCDEF" for c in p) for p in parts)


def _is_link(link: PortLink) -> bool:
    """An ifindex, or 0: a lock the operator released (layout.LOCK_RELEASED)."""
    return 0 <= link.ifindex <= MAX_IFINDEX


def _is_time(when: float) -> bool:
    """A wall-clock time a daemon could have written (finite, not before the epoch)."""
    return 0.0 <= when <= LATEST_TIME


def _link(entry: dict) -> PortLink:
    return PortLink(int(entry["ifindex"]), str(entry["port"]))


def _lock_json(lock: SavedLock) -> dict:
    return {"mac": lock.mac, "ifindex": lock.port.ifindex, "port": lock.port.name}


def _waiter_json(waiter: SavedWaiter) -> dict:
    entry = asdict(waiter)
    entry.pop("port")
    return {**entry, "ifindex": waiter.port.ifindex, "port": waiter.port.name}


# -- heirs the operator named (`identity release --to PORT`) ---------------------------

HEIRS_SUFFIX = ".heirs"


def heirs_path(locks_path: Path) -> Path:
    """Beside the lock file: MAC -> the port its released lock goes to."""
    return locks_path.with_name(locks_path.name + HEIRS_SUFFIX)


def name_heir(locks_path: Path, mac: str, port: PortLink) -> None:
    """Say that `mac`'s released lock goes to `port` (not to the port in line)."""
    heirs = load_heirs(locks_path)
    heirs[mac] = port
    _write_heirs(locks_path, heirs)


def take_heir(locks_path: Path, mac: str) -> PortLink | None:
    """The port named for `mac`, forgotten once taken; None when none was named."""
    heirs = load_heirs(locks_path)
    port = heirs.pop(mac, None)
    if port is not None:
        _write_heirs(locks_path, heirs)
    return port


def load_heirs(locks_path: Path) -> dict[str, PortLink]:
    try:
        body = json.loads(heirs_path(locks_path).read_text(encoding="utf-8"))
        return {str(mac): _link(entry) for mac, entry in body.items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        log.warning("the lock heirs file %s cannot be read (%s): ignored",
                    heirs_path(locks_path), exc)
        return {}


def _write_heirs(locks_path: Path, heirs: dict[str, PortLink]) -> None:
    path = heirs_path(locks_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({mac: {"ifindex": port.ifindex, "port": port.name}
                               for mac, port in heirs.items()}), encoding="utf-8")
    os.replace(tmp, path)
