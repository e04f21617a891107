"""`transparent-md status`: what a running daemon in this network namespace reports."""

from __future__ import annotations

import argparse
import json

from transparent_md.errors import UserError
from transparent_md.names import DEFAULT_NAME


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "status", help="show a running daemon's ports, filters, counts and recent problems",
        description="Show what the `run` daemon named NAME in this network namespace "
        "reports: version, uptime, bridges, each port and whether our tc filter is on it, "
        "identities in use, records, and its most recent warnings and errors.")
    p.add_argument("--name", default=DEFAULT_NAME,
                   help=f"the daemon's --name (default {DEFAULT_NAME})")
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.set_defaults(handler=status_command)


def status_command(args: argparse.Namespace) -> int:
    from transparent_md.daemon import status
    from transparent_md.names import DaemonNames

    names = DaemonNames.here(args.name)
    report = status.read(names)
    if report is None:
        raise UserError(f"no transparent-md daemon named {args.name!r} runs in this network "
                        "namespace (start one with `transparent-md run`)")
    print(json.dumps(report, indent=2) if args.json else status.render(report))
    return 0
