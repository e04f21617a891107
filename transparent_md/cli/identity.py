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
        "docs/hostile-guests.md).")
    verbs = p.add_subparsers(dest="identity_verb", metavar="ACTION", required=True)
    locks = verbs.add_parser("locks", help="list MAC locks: MAC, port, bridge, and the "
                             "ports waiting for each")
    locks.add_argument("--json", action="store_true", help="print JSON")
    release = verbs.add_parser("release", help="release one MAC's lock")
    release.add_argument("--mac", required=True, type=_mac, help="the locked MAC")
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
    if not is_held(names.lock_file) or not directory.is_dir():
        raise UserError(f"no transparent-md daemon named {args.name!r} runs in this network "
                        f"namespace (or its tables under {directory} are not visible here)")
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
    if not locks.release_mac(directory, args.mac):
        raise UserError(f"{args.mac} holds no lock (or it is released already)")
    print(f"released {args.mac}")
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
