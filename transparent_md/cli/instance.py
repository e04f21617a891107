"""`transparent-md instance ...`: manage the instance records the responder serves.

Every verb opens the store given by --store (default DEFAULT_STORE_PATH); changes
reach a running `run` daemon on its next request, with no restart.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from transparent_md.errors import UserError
from transparent_md.store import DEFAULT_STORE_PATH, Instance, RecordError, open_store
from transparent_md.store.importfile import read_records
from transparent_md.store.record import FIELDS, MAX_USER_DATA_BYTES, parse_record

# (flag, record field, help). Scalar flags set the field to the given text.
_SCALAR_FLAGS = (
    ("--mac", "mac", "guest MAC address, e.g. 52:54:00:12:34:56"),
    ("--ip", "ip", "guest IPv4 address (local-ipv4)"),
    ("--bridge", "bridge", "only answer this guest on this bridge (e.g. br0)"),
    ("--port", "port", "only answer this guest on this bridge port (e.g. tap3, vnet0)"),
    ("--hostname", "hostname", "hostname (default: the instance id)"),
    ("--local-hostname", "local_hostname", "local-hostname (default: --hostname)"),
    ("--availability-zone", "availability_zone",
     "availability zone, e.g. eu-west-1a; region = zone minus its last letter "
     "(default local-1a)"),
    ("--instance-type", "instance_type", "instance type (default t3.micro)"),
    ("--ami-id", "ami_id", "image id (default ami-00000000000000000)"),
    ("--reservation-id", "reservation_id", "reservation id (default r-<instance id>)"),
    ("--account-id", "account_id", "owner account id (default 000000000000)"),
    ("--public-ipv4", "public_ipv4", "public IPv4 address"),
    ("--public-hostname", "public_hostname", "public hostname"),
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "instance",
        help="add, change, remove, list and import instance records",
        description=(
            "Manage the instance records guests are answered from. A guest is matched "
            "by MAC (and by bridge/port/IP where the record sets them), else by IP on "
            "its bridge among records without a MAC. Changes reach a running daemon on "
            "its next request."
        ),
    )
    verbs = parser.add_subparsers(dest="instance_verb", metavar="VERB", required=True)

    add = verbs.add_parser(
        "add", help="add one instance",
        description="Add one instance record. Needs --mac or --ip (or both). Example:\n"
                    "  transparent-md instance add i-0abc --mac 52:54:00:12:34:56 "
                    "--ip 10.0.0.5 --bridge br0 --ssh-key me=\"ssh-ed25519 AAAA... me\" "
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
                        choices=[f for f in FIELDS if f != "instance_id"],
                        help="unset FIELD (repeatable), e.g. --clear user_data")
    update.add_argument("--clear-password", action="store_true",
                        help="forget the OpenStack password the guest posted, so it may "
                             "post a new one")
    update.set_defaults(handler=_update)

    remove = verbs.add_parser("remove", help="remove instances",
                              description="Remove records; their guests get 404 from then on.")
    remove.add_argument("instance_ids", nargs="+", metavar="INSTANCE_ID")
    _add_store_flag(remove)
    remove.set_defaults(handler=_remove)

    listing = verbs.add_parser("list", help="list instances",
                               description="One line per record: id, MAC, IP, bridge, port, "
                                           "hostname.")
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
                    "is invalid or ambiguous, nothing changes. Records whose instance_id "
                    "exists replace the stored one (a posted OpenStack password is kept).")
    importer.add_argument("file", metavar="FILE", help="YAML or JSON file: a list of records")
    importer.add_argument("--prune", action="store_true",
                          help="also remove stored records that are not in FILE")
    _add_store_flag(importer)
    importer.set_defaults(handler=_import)


def _add_store_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", metavar="PATH", default=None,
                        help=f"instance store (SQLite file; default {DEFAULT_STORE_PATH})")


def _add_field_flags(parser: argparse.ArgumentParser) -> None:
    fields = parser.add_argument_group("record fields")
    for flag, field, help_text in _SCALAR_FLAGS:
        fields.add_argument(flag, dest=f"field_{field}", metavar="VALUE", help=help_text)
    fields.add_argument("--launch-index", dest="field_launch_index", type=int, metavar="N",
                        help="ami-launch-index (default 0)")
    fields.add_argument("--security-group", dest="security_groups", action="append",
                        metavar="NAME", help="security group name (repeatable)")
    fields.add_argument("--ssh-key", dest="ssh_keys", action="append", metavar="NAME=KEY",
                        help="OpenSSH public key under a name (repeatable); served as "
                             "public-keys/0=NAME and OpenStack public_keys")
    fields.add_argument("--ssh-key-file", dest="ssh_key_files", action="append",
                        metavar="NAME=PATH", help="like --ssh-key, reading the key from PATH")
    fields.add_argument("--user-data-file", metavar="PATH",
                        help=f"user-data, read as bytes (at most {MAX_USER_DATA_BYTES} bytes)")
    fields.add_argument("--vendor-data-file", metavar="PATH",
                        help="OpenStack vendor data (YAML or JSON document)")
    fields.add_argument("--network-data-file", metavar="PATH",
                        help="OpenStack network_data.json to serve instead of the generated "
                             "one-DHCP-link document")
    fields.add_argument("--openstack-uuid", metavar="UUID",
                        help="OpenStack uuid (default derived from the instance id)")
    fields.add_argument("--project-id", metavar="ID", help="OpenStack project_id")
    fields.add_argument("--meta", action="append", metavar="KEY=VALUE",
                        help="OpenStack meta entry (repeatable)")
    fields.add_argument("--iam-file", metavar="PATH",
                        help="IAM role and credentials as YAML/JSON: role, access_key_id, "
                             "secret_access_key, token, expiration")
    imds = fields.add_mutually_exclusive_group()
    imds.add_argument("--imdsv2-required", dest="imdsv2_required", action="store_true",
                      default=None, help="refuse token-less (IMDSv1) requests with 401")
    imds.add_argument("--imdsv2-optional", dest="imdsv2_required", action="store_false",
                      help="allow IMDSv1 (the default)")
    _add_store_flag(parser)


def _fields_from_flags(args: argparse.Namespace) -> dict[str, Any]:
    """Only the fields the user gave on the command line."""
    given: dict[str, Any] = {}
    for name, value in vars(args).items():
        if name.startswith("field_") and value is not None:
            given[name[len("field_"):]] = value
    if args.security_groups is not None:
        given["security_groups"] = args.security_groups
    keys = _pairs(args.ssh_keys, "--ssh-key")
    for name, path in _pairs(args.ssh_key_files, "--ssh-key-file").items():
        keys[name] = _read_text(path)
    if args.ssh_keys is not None or args.ssh_key_files is not None:
        given["ssh_keys"] = keys
    if args.user_data_file is not None:
        given["user_data"] = _read_bytes(args.user_data_file)
    if args.vendor_data_file is not None:
        given["vendor_data"] = _read_document(args.vendor_data_file)
    if args.network_data_file is not None:
        given["network_data"] = _read_document(args.network_data_file)
    if args.iam_file is not None:
        given["iam"] = _read_document(args.iam_file)
    if args.imdsv2_required is not None:
        given["imdsv2_required"] = args.imdsv2_required
    return given


def _openstack_from_flags(args: argparse.Namespace, current: dict[str, Any]) -> dict[str, Any]:
    section = dict(current)
    if args.openstack_uuid is not None:
        section["uuid"] = args.openstack_uuid
    if args.project_id is not None:
        section["project_id"] = args.project_id
    if args.meta is not None:
        section["meta"] = _pairs(args.meta, "--meta")
    return section


def _build(raw: dict[str, Any]) -> Instance:
    try:
        return parse_record(raw, raw.get("instance_id"))
    except RecordError as exc:
        raise UserError(str(exc)) from exc


def _add(args: argparse.Namespace) -> int:
    raw = {"instance_id": args.instance_id, **_fields_from_flags(args)}
    openstack = _openstack_from_flags(args, {})
    if openstack:
        raw["openstack"] = openstack
    store = open_store(args.store)
    store.add(_build(raw))
    return 0


def _update(args: argparse.Namespace) -> int:
    store = open_store(args.store)
    current = store.get(args.instance_id)
    if current is None:
        raise UserError(f"no instance {args.instance_id!r} in {store.path} "
                        "(use 'instance add' to create it)")
    raw = current.to_mapping()
    raw.update(_fields_from_flags(args))
    raw["openstack"] = _openstack_from_flags(args, raw.get("openstack", {}))
    for field in args.clear:
        raw.pop(field, None)
        if field == "user_data":
            raw.pop("user_data_base64", None)
    store.update(_build(raw))
    if args.clear_password:
        store.clear_password(args.instance_id)
    return 0


def _remove(args: argparse.Namespace) -> int:
    store = open_store(args.store)
    for instance_id in args.instance_ids:
        store.remove(instance_id)
    return 0


def _list(args: argparse.Namespace) -> int:
    instances = open_store(args.store).list()
    if args.json:
        json.dump([i.to_mapping() for i in instances], sys.stdout, indent=2)
        print()
        return 0
    rows = [("INSTANCE_ID", "MAC", "IP", "BRIDGE", "PORT", "HOSTNAME")]
    rows += [(i.instance_id, i.mac or "-", i.ip or "-", i.bridge or "-", i.port or "-",
              i.hostname) for i in instances]
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _show(args: argparse.Namespace) -> int:
    store = open_store(args.store)
    instance = store.get(args.instance_id)
    if instance is None:
        raise UserError(f"no instance {args.instance_id!r} in {store.path}")
    record = instance.to_mapping()
    if args.json:
        print(json.dumps(record, indent=2))
    else:
        print(yaml.safe_dump([record], sort_keys=False), end="")
    if store.password(args.instance_id) is not None:
        print("# the guest has posted an OpenStack password", file=sys.stderr)
    return 0


def _import(args: argparse.Namespace) -> int:
    records = read_records(args.file)
    store = open_store(args.store)
    store.put_many(records, replace=True, prune=args.prune)
    print(f"imported {len(records)} instance(s) into {store.path}", file=sys.stderr)
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
    try:
        return yaml.safe_load(_read_text(path))
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not YAML or JSON: {exc}") from exc
