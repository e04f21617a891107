"""`instance apply`, `instance bind` and `instance park` (`unbind`): what VM managers and
configuration tools run (declarative sync, a record bound to its tap at VM start and
parked at VM stop).

Registered under `instance` by `cli.instance`, which passes in how its verbs add
`--store` and open the store, so these verbs take the same store options.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from transparent_md.errors import UserError
from transparent_md.store import RecordError, Store
from transparent_md.store.importfile import STDIN, bind_file_links, read_records
from transparent_md.store.policy import exposure_warnings

# Opens the store --store names; `create=True` only for verbs that create records.
StoreOpener = Callable[..., Store]
# `apply --exit-code`: what a script sees when something changed (like `git diff`).
EXIT_CHANGED = 1


def register(verbs: argparse._SubParsersAction,
             add_store_flag: Callable[[argparse.ArgumentParser], None],
             open_store: StoreOpener) -> None:
    apply = verbs.add_parser(
        "apply", help="make the store match a YAML or JSON file; print what changed",
        description="Declarative import: create the records of FILE that are missing, "
                    "update those that differ, and with --prune remove the ones FILE does "
                    "not list; records that already match are not touched (no new "
                    "revision). Prints one line per change and a summary; running it again "
                    "on the same file changes nothing and exits 0. The writes land in one "
                    "transaction, and only if no planned record was changed meanwhile.")
    apply.add_argument("file", metavar="FILE",
                       help=f"YAML or JSON file: a list of records ('{STDIN}': stdin)")
    apply.add_argument("--prune", action="store_true",
                       help="also remove stored records that FILE does not list")
    add_allow_empty(apply)
    apply.add_argument("--dry-run", action="store_true",
                       help="print what would change and change nothing")
    apply.add_argument("--exit-code", action="store_true",
                       help=f"exit {EXIT_CHANGED} when something changed (or would, with "
                            "--dry-run), 0 when nothing did")
    add_store_flag(apply)
    apply.set_defaults(handler=lambda args: _apply(args, open_store))

    bind = verbs.add_parser(
        "bind", help="bind a record to its VM's bridge port (at VM start); serves it again",
        description="Bind a record to the bridge port (tap) its VM has now, so only a guest "
                    "on that port is answered with it: a neighbour that copies its MAC and "
                    "IP gets nothing, even if it asks first. The binding names the link "
                    "(its ifindex, looked up now: with --api in the daemon's network "
                    "namespace, else in this one), so a port deleted and created again "
                    "under the same name is not served until bound again; a port that "
                    "does not exist is refused. A parked record is served again. For VM "
                    "managers' start hooks (Proxmox post-start, Incus, ...; see examples/). "
                    "The guest's next request sees it.")
    bind.add_argument("instance_id", metavar="INSTANCE_ID")
    bind.add_argument("--port", required=True, metavar="TAP",
                      help="the VM's bridge port now, e.g. tap101i0 or vnet3")
    bind.add_argument("--bridge", metavar="BRIDGE", help="also set the record's bridge")
    _add_target_flags(bind, add_store_flag)
    bind.set_defaults(handler=lambda args: _bind(args, open_store))

    for verb, summary in (("park", "park a record: keep it, serve it to nobody (at VM "
                                   "stop)"),
                          ("unbind", "at VM stop: the same as park")):
        parser = verbs.add_parser(
            verb, help=summary,
            description="Park the record: it is kept but served to nobody, by port, MAC or "
                        "IP, until `instance bind` binds it to its VM's port again. For VM "
                        "managers' stop hooks (Proxmox pre-stop): the tap's name goes to the "
                        "next VM that starts, and a stopped VM's MAC is no one's. `unbind` "
                        "is the same verb under its older name. An absent record is no "
                        "error (--strict: it is).")
        parser.add_argument("instance_id", metavar="INSTANCE_ID")
        parser.add_argument("--strict", action="store_true",
                            help="fail when the record does not exist")
        _add_target_flags(parser, add_store_flag)
        parser.set_defaults(handler=lambda args: _park(args, open_store))


def _add_target_flags(parser: argparse.ArgumentParser,
                      add_store_flag: Callable[[argparse.ArgumentParser], None]) -> None:
    add_store_flag(parser)
    parser.add_argument("--api", metavar="SOCKET", default=None,
                        help="write through a running daemon's admin API instead of "
                             "--store, e.g. /run/transparent-md/tmd.sock")


def _apply(args: argparse.Namespace, open_store: StoreOpener) -> int:
    from transparent_md.api import apply

    records = read_records(args.file)
    store = open_store(args, create=True)
    refuse_empty_prune(args, records, store)
    records, parked = bind_file_links(store, records)
    for warning in parked:
        print(f"transparent-md: warning: {warning}", file=sys.stderr)
    planned = apply.plan(store, records, prune=args.prune)
    if args.dry_run:
        print("\n".join(["dry run, nothing written:", *planned.lines()]))
    else:
        apply.execute(store, planned)
        print("\n".join(planned.lines()))
        for warning in exposure_warnings([*planned.created,
                                          *(r for r, _ in planned.updated)]):
            print(f"transparent-md: warning: {warning}", file=sys.stderr)
    return EXIT_CHANGED if args.exit_code and planned.changes else 0


def add_allow_empty(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allow-empty", action="store_true",
                        help="with --prune: accept a FILE that lists no record, i.e. remove "
                             "every stored record (refused without it: an empty or wrong "
                             "file is a likelier cause)")


def refuse_empty_prune(args: argparse.Namespace, records: list, store: Store) -> None:
    """`--prune` with a file of no records would remove every record: only on purpose."""
    count = len(store.list()) if args.prune and not records and not args.allow_empty else 0
    if count:
        raise UserError(f"{args.file} lists no records: --prune would remove all {count} "
                        f"records of {store.path}; add --allow-empty if that is meant")


def _bind(args: argparse.Namespace, open_store: StoreOpener) -> int:
    from transparent_md.api import operations

    if _through_api(args):
        body = {"port": args.port, **({"bridge": args.bridge} if args.bridge else {})}
        _api_call(args.api, "PUT", f"/v1/instances/{args.instance_id}/binding", body)
    else:
        try:
            operations.bind(open_store(args), args.instance_id, args.port, args.bridge)
        except RecordError as exc:
            raise UserError(str(exc)) from exc
    return 0


def _park(args: argparse.Namespace, open_store: StoreOpener) -> int:
    from transparent_md.api import operations

    try:
        if _through_api(args):
            _api_call(args.api, "DELETE", f"/v1/instances/{args.instance_id}/binding")
        else:
            operations.park(open_store(args), args.instance_id)
    except operations.NotFound:
        if args.strict:
            raise
    return 0


def _through_api(args: argparse.Namespace) -> bool:
    if args.api and args.store:
        raise UserError("give --store or --api, not both")
    return bool(args.api)


def _api_call(socket_path: str, method: str, target: str, body: Any = None) -> Any:
    from transparent_md.api import operations
    from transparent_md.api.client import ApiClient, raise_for

    with ApiClient(socket_path) as client:
        reply = client.request(method, target, body)
    if reply.status == 404 and isinstance(reply.body, dict) and reply.body.get("record"):
        raise operations.NotFound(reply.body["record"])
    return raise_for(reply).body
