"""`transparent-md identity`: the running daemon's MAC locks (list, release one early)."""

from __future__ import annotations

import argparse
import json
import re

from transparent_md.errors import UserError
from transparent_md.names import DEFAULT_NAME

_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


def _mac(value: str) -> str:
    if not _MAC_RE.match(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a MAC address (aa:bb:cc:dd:ee:ff)")
    return value.lower()


def register(sub: argparse._SubParsersAction) -> None:
    from transparent_md.datapath.lock_keeper import release_quiet_s

    quiet = release_quiet_s()
    p = sub.add_parser(
        "identity", help="list or release the MAC locks of a running daemon",
        description="A MAC that asked from one bridge port is locked to that port while the "
        "port exists: from any other port it gets nothing (a guest copying a neighbour's "
        "MAC), and that port waits in line for the lock. Locks survive restarts of the "
        "daemon; when their port goes they pass to the port in line that asked first, or "
        "are released. Release one early when a VM legitimately moves to another port "
        "while its old port still exists, or to end a neighbour's hold on an unbound "
        f"record: a released lock is held by nobody for {quiet[0]:g} to {quiet[1]:g} s, "
        "then goes to the port in line, or to the next port that asks (see "
        "docs/hostile-guests.md). Works wherever `status` does, also for a daemon started "
        "under `ip netns exec` (its pins are read from its own mount namespace).")
    verbs = p.add_subparsers(dest="identity_verb", metavar="ACTION", required=True)
    locks = verbs.add_parser("locks", help="list MAC locks: MAC, port, bridge, and the "
                             "ports waiting for each")
    locks.add_argument("--json", action="store_true", help="print JSON")
    release = verbs.add_parser("release", help="release one MAC's lock")
    release.add_argument("--mac", required=True, type=_mac, help="the locked MAC")
    release.add_argument("--to", metavar="PORT",
                         help="after the quiet time, give the lock to this attached port "
                         "(a VM moving there) instead of the port that waited longest: a "
                         "neighbour copying the MAC may have waited longer")
    for parser in (locks, release):
        parser.add_argument("--name", default=DEFAULT_NAME,
                            help=f"the daemon's --name (default {DEFAULT_NAME})")
    p.set_defaults(handler=identity_command)


def identity_command(args: argparse.Namespace) -> int:
    from transparent_md.datapath import locks, tables
    from transparent_md.lockfile import is_held
    from transparent_md.names import DaemonNames

    names = DaemonNames.here(args.name)
    directory = tables.directory_of(names)
    if not is_held(names.lock_file):
        raise UserError(f"no transparent-md daemon named {args.name!r} runs in this network "
                        "namespace (start one with `transparent-md run`)")
    if not directory.is_dir():
        _see_the_daemons_pins(names)
    if args.identity_verb == "locks":
        found = locks.list_locks(directory)
        line = _waiting_lines(names.locks_file)
        if args.json:
            print(json.dumps([{**vars(lock), "waiting": line.get(lock.mac, [])}
                              for lock in found], indent=2))
            return 0
        for lock in found:
            print(f"{lock.mac}  port {lock.port or '(gone)'}  bridge {lock.bridge or '-'}")
            for waiter in line.get(lock.mac, []):
                print(f"    waiting: port {waiter['port']} IP {waiter['ip']} "
                      f"since {waiter['since']}")
        return 0
    from transparent_md.datapath import lock_file

    heir = None
    if args.to:
        heir = locks.port_link(directory, args.to)
        if heir is None:
            raise UserError(f"{args.to!r} is not a port the daemon {args.name!r} serves "
                            "(see `transparent-md status`)")
        lock_file.name_heir(names.locks_file, args.mac, heir)
    if not locks.release_mac(directory, args.mac):
        if heir is not None:
            lock_file.take_heir(names.locks_file, args.mac)
        raise UserError(f"{args.mac} holds no lock (or it is released already)")
    print(f"released {args.mac}" + (f"; it goes to port {args.to} after the quiet time"
                                    if heir is not None else ""))
    return 0


def _waiting_lines(path) -> dict[str, list[dict]]:
    """The ports waiting for each MAC, as the daemon last wrote them (within a second)."""
    import time

    from transparent_md.datapath import lock_file

    line: dict[str, list[dict]] = {}
    for waiter in lock_file.load(path).waiting:
        line.setdefault(waiter.mac, []).append({
            "port": waiter.port.name, "ifindex": waiter.port.ifindex, "ip": waiter.ip,
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(waiter.first_asked))})
    return line


def _see_the_daemons_pins(names) -> None:
    """Look at the pins from the daemon's own mount namespace: one started under
    `ip netns exec` has a /sys of its own, where `status` (a file in /run) still finds
    it but its pins are not visible from here."""
    from transparent_md.lockfile import holder_pid
    from transparent_md.process import enter_mount_namespace_of

    pid = holder_pid(names.lock_file)
    try:
        if pid is None or not enter_mount_namespace_of(pid):
            raise FileNotFoundError
    except OSError as exc:
        detail = f": {exc.strerror}" if exc.strerror else ""
        raise UserError(f"the daemon {names.name!r} (pid {pid}) runs here but its pins under "
                        f"{names.pin_dir} are not visible{detail}") from None
    if not names.pin_dir.is_dir():
        raise UserError(f"the daemon {names.name!r} (pid {pid}) runs here but has no pins "
                        f"under {names.pin_dir} (still starting?)")
