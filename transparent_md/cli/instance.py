"""`transparent-md instance ...`: manage the instance records the responder serves.

Every verb opens the store given by --store (default DEFAULT_STORE_PATH); changes
reach a running `run` daemon on its next request, with no restart.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transparent_md.cli import instance_sync
from transparent_md.cli.store_options import add_store_options, open_from_args
from transparent_md.errors import UserError
from transparent_md.store import Instance, RecordError
from transparent_md.store.errors import NoSuchRecord, RecordExists
from transparent_md.store.fields import clearable_fields
from transparent_md.store.fieldspec import FieldSpec, Flag
from transparent_md.store.importfile import STDIN, bind_file_links, read_records
from transparent_md.store.links import bind_link, parked_warning
from transparent_md.store.policy import exposure_warnings, serving
from transparent_md.store.record import DEEP_JSON_PROBLEM, parse_record, record_specs


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "instance",
        help="add, change, remove, list and import instance records",
        description=(
            "Manage the instance records guests are answered from. A guest is matched "
            "by MAC (and by bridge/port/IP where the record sets them), else by IP on "
            "its bridge among records without a MAC; a port binding names the link "
            "that had the name when it was bound, and a parked record answers nobody. "
            "Changes reach a running daemon on its next request."
        ),
    )
    verbs = parser.add_subparsers(dest="instance_verb", metavar="VERB", required=True)

    add = verbs.add_parser(
        "add", help="add one instance",
        description="Add one instance record. Needs --mac, or --ip with --bridge or --port "
                    "(a record bound to nothing would answer anywhere); one with credentials "
                    "or user-data needs --mac or --port. --port binds it to the link that "
                    "has that name now, in this network namespace (parked, served to "
                    "nobody, if there is none). A record with credentials or user-data "
                    "should be bound to its port; without one a warning says what a "
                    "neighbour needs to read it. "
                    "Example:\n"
                    "  transparent-md instance add i-0abc --mac 52:54:00:12:34:56 "
                    "--ip 10.0.0.5 --bridge br0 --port vnet3 "
                    "--ssh-key me=\"ssh-ed25519 AAAA... me\" "
                    "--user-data-file cloud-config.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add.add_argument("instance_id", metavar="INSTANCE_ID", help="instance id, e.g. i-0abc")
    _add_field_flags(add)
    add.set_defaults(handler=_add)

    update = verbs.add_parser(
        "update", help="change fields of one instance",
        description="Change the given fields of an existing record; other fields keep "
                    "their values. Repeatable flags (--ssh-key, --security-group, --meta) "
                    "replace the whole list. The guest's next request sees the new record.",
    )
    update.add_argument("instance_id", metavar="INSTANCE_ID")
    _add_field_flags(update)
    update.add_argument("--clear", action="append", default=[], metavar="FIELD",
                        choices=clearable_fields(),
                        help="unset FIELD (repeatable), e.g. --clear user_data")
    update.add_argument("--clear-password", action="store_true",
                        help="forget the OpenStack password the guest posted, so it may "
                             "post a new one")
    update.set_defaults(handler=_update)

    remove = verbs.add_parser(
        "remove", help="remove instances",
        description="Remove records in one transaction; their guests get 404 from then on. "
                    "If any id is unknown nothing is removed, unless --missing-ok.")
    remove.add_argument("instance_ids", nargs="+", metavar="INSTANCE_ID")
    remove.add_argument("--missing-ok", action="store_true",
                        help="skip ids that are not in the store instead of failing")
    _add_store_flag(remove)
    remove.set_defaults(handler=_remove)

    listing = verbs.add_parser("list", help="list instances",
                               description="One line per record: id, MAC, IP, bridge, port, "
                                           "hostname, and who it serves: link NAME#IFINDEX "
                                           "(port-bound), mac+bridge, mac, ip+bridge, or "
                                           "parked (nobody).")
    listing.add_argument("--json", action="store_true", help="print full records as JSON")
    _add_store_flag(listing)
    listing.set_defaults(handler=_list)

    show = verbs.add_parser("show", help="print one instance record",
                            description="Print a record in the import-file format.")
    show.add_argument("instance_id", metavar="INSTANCE_ID")
    show.add_argument("--json", action="store_true", help="JSON instead of YAML")
    _add_store_flag(show)
    show.set_defaults(handler=_show)

    importer = verbs.add_parser(
        "import", help="add or replace instances from a YAML or JSON file",
        description="Read a list of records (see examples/instances.yaml; field names as "
                    "in `instance show`) and write them in one transaction: if any record "
                    "is invalid or ambiguous, nothing changes, and every problem of the "
                    "file is listed. Records whose instance_id exists replace the stored "
                    "one (a posted OpenStack password is kept). YAML anchors and aliases "
                    "are refused, and so is a file over 32 MiB.")
    importer.add_argument("file", metavar="FILE",
                          help=f"YAML or JSON file: a list of records ('{STDIN}': stdin)")
    importer.add_argument("--prune", action="store_true",
                          help="also remove stored records that are not in FILE")
    instance_sync.add_allow_empty(importer)
    _add_store_flag(importer)
    importer.set_defaults(handler=_import)


    instance_sync.register(verbs, _add_store_flag, open_from_args)


def _add_store_flag(parser: argparse.ArgumentParser) -> None:
    add_store_options(parser)  # a SQLite file or etcd://..., with --etcd-cacert/cert/key


def _add_field_flags(parser: argparse.ArgumentParser) -> None:
    """One option per Flag declared on the record's fields (see store.record.Instance)."""
    fields = parser.add_argument_group("record fields")
    for _, field_spec in record_specs():
        switches = [f for f in field_spec.flags if f.reader in ("true", "false")]
        group = fields.add_mutually_exclusive_group() if switches else fields
        for flag in field_spec.flags:
            _add_flag(group, flag)
    _add_store_flag(parser)


def _add_flag(group: Any, flag: Flag) -> None:
    dest = _dest(flag)
    if flag.reader in ("true", "false"):
        group.add_argument(flag.name, dest=dest, action="store_true", default=None,
                           help=flag.help)
    elif flag.reader in ("list", "pairs", "pair_files"):
        group.add_argument(flag.name, dest=dest, action="append", metavar=flag.metavar,
                           help=flag.help)
    else:
        group.add_argument(flag.name, dest=dest, metavar=flag.metavar, help=flag.help,
                           type=int if flag.reader == "int" else str)


def _dest(flag: Flag) -> str:
    return "flag_" + flag.name.lstrip("-").replace("-", "_")


def _fields_from_flags(args: argparse.Namespace) -> dict[FieldSpec, Any]:
    """Only the fields the user gave on the command line, in their file form."""
    given: dict[FieldSpec, Any] = {}
    for _, field_spec in record_specs():
        values = [(flag, getattr(args, _dest(flag))) for flag in field_spec.flags]
        values = [(flag, value) for flag, value in values if value is not None]
        if values:
            given[field_spec] = _combine(values)
    return given


def _combine(values: list[tuple[Flag, Any]]) -> Any:
    """The field's value from the flags given for it (e.g. --ssh-key and --ssh-key-file)."""
    merged: dict[str, Any] = {}
    for flag, value in values:
        reader = flag.reader
        if reader in ("text", "int", "list"):
            return value
        if reader == "true":
            return True
        if reader == "false":
            return False
        if reader == "bytes_file":
            return _read_bytes(value)
        if reader == "document_file":
            return _read_document(value)
        if reader == "pairs":
            merged.update(_pairs(value, flag.name))
        elif reader == "pair_files":
            merged.update({k: _read_text(p) for k, p in _pairs(value, flag.name).items()})
        else:
            raise AssertionError(f"unknown flag reader {reader!r} of {flag.name}")
    return merged


def _apply(raw: dict[str, Any], given: dict[FieldSpec, Any]) -> dict[str, Any]:
    """`raw` (a file-form record) with the given fields set; returns `raw`."""
    for field_spec, value in given.items():
        target = raw.setdefault(field_spec.section, {}) if field_spec.section else raw
        for alias in field_spec.aliases:  # e.g. new user_data replaces user_data_base64
            target.pop(alias, None)
        target[field_spec.member] = value
    return raw


def _clear(raw: dict[str, Any], key: str) -> None:
    """Unset `key` (a top-level key, section, or section.member) and its aliases; a
    cleared port takes its link with it."""
    if key == "port":
        raw.pop("port_ifindex", None)
    for _, field_spec in record_specs():
        if key in (field_spec.key, *field_spec.aliases, field_spec.section):
            target = raw.get(field_spec.section, {}) if field_spec.section else raw
            for name in (field_spec.member, *field_spec.aliases):
                target.pop(name, None)
    raw.pop(key, None)


def _warn_exposed(records: list[Instance]) -> None:
    for warning in exposure_warnings(records):
        print(f"transparent-md: warning: {warning}", file=sys.stderr)


Handler = Callable[[argparse.Namespace], int]


def _build(raw: dict[str, Any]) -> Instance:
    """A record from its file form, its port binding naming the link that has the name
    now, or parked (and said so) if there is none (see store.links)."""
    try:
        record = parse_record(raw, raw.get("instance_id"))
    except RecordError as exc:
        raise UserError(str(exc)) from exc
    bound = bind_link(record, park_missing=True)
    if bound.parked and not record.parked:
        print(f"transparent-md: warning: {parked_warning(record)}", file=sys.stderr)
    return bound


def _hinted(error: type[Exception], hint: str) -> Callable[[Handler], Handler]:
    """The store says what went wrong; the CLI adds what to type instead."""

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        def run(args: argparse.Namespace) -> int:
            try:
                return handler(args)
            except error as exc:
                raise UserError(f"{exc} ({hint})") from exc

        return run

    return wrap


@_hinted(RecordExists, "use 'instance update', or 'instance import' to replace it")
def _add(args: argparse.Namespace) -> int:
    record = _build(_apply({"instance_id": args.instance_id}, _fields_from_flags(args)))
    open_from_args(args, create=True).add(record)
    _warn_exposed([record])
    return 0


@_hinted(NoSuchRecord, "use 'instance add' to create it")
def _update(args: argparse.Namespace) -> int:
    given = _fields_from_flags(args)  # files are read before the write transaction
    rebinds = any(spec.key == "port" for spec in given)

    def change(current: Instance) -> Instance:
        raw = _apply(current.to_mapping(), given)
        if rebinds:
            raw.pop("port_ifindex", None)  # --port binds to the link that has it now
        for key in args.clear:
            _clear(raw, key)
        return _build(raw)

    record = open_from_args(args).modify(args.instance_id, change,
                                         clear_password=args.clear_password)
    _warn_exposed([record])
    return 0


@_hinted(NoSuchRecord, "nothing removed; --missing-ok removes the others")
def _remove(args: argparse.Namespace) -> int:
    store = open_from_args(args)
    removed = store.remove(*args.instance_ids, missing_ok=args.missing_ok)
    skipped = [i for i in args.instance_ids if i not in removed]
    if skipped:
        print(f"not in {store.path}, skipped: {', '.join(skipped)}", file=sys.stderr)
    return 0


def _list(args: argparse.Namespace) -> int:
    instances = open_from_args(args).list()
    if args.json:
        json.dump([i.to_mapping() for i in instances], sys.stdout, indent=2)
        print()
        return 0
    rows = [("INSTANCE_ID", "MAC", "IP", "BRIDGE", "PORT", "HOSTNAME", "SERVES")]
    rows += [(i.instance_id, i.mac or "-", i.ip or "-", i.bridge or "-", i.port or "-",
              i.hostname, serving(i)) for i in instances]
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _show(args: argparse.Namespace) -> int:
    store = open_from_args(args)
    instance = store.get(args.instance_id)
    if instance is None:
        raise UserError(f"no instance {args.instance_id!r} in {store.path}")
    record = instance.to_mapping()
    if args.json:
        print(json.dumps(record, indent=2))
    else:
        import yaml

        print(yaml.safe_dump([record], sort_keys=False), end="")
    if store.password(args.instance_id) is not None:
        print("# the guest has posted an OpenStack password", file=sys.stderr)
    return 0


def _import(args: argparse.Namespace) -> int:
    records = read_records(args.file)
    store = open_from_args(args, create=True)
    instance_sync.refuse_empty_prune(args, records, store)
    records, parked = bind_file_links(store, records)
    store.put_many(records, replace=True, prune=args.prune)
    for warning in parked:
        print(f"transparent-md: warning: {warning}", file=sys.stderr)
    print(f"imported {len(records)} instance(s) into {store.path}", file=sys.stderr)
    _warn_exposed(records)
    return 0


def _pairs(items: list[str] | None, flag: str) -> dict[str, str]:
    result: dict[str, str] = {}
    for item in items or ():
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UserError(f"{flag} {item!r}: expected NAME=VALUE")
        result[name] = value
    return result


def _read_bytes(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc}") from exc


def _read_text(path: str) -> str:
    try:
        return _read_bytes(path).decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text") from exc


def _read_document(path: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(_read_text(path))
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not YAML or JSON: {exc}") from exc
    except RecursionError:
        raise UserError(f"{path}: {DEEP_JSON_PROBLEM}") from None
