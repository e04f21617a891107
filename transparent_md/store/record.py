"""An instance record and the rules a record must obey before it reaches the store.

Records arrive from YAML/JSON files and from CLI flags as plain mappings; `parse_record`
turns one into an immutable `Instance` or raises `RecordError` naming the record, and
for every field that is wrong, the field and the problem, so an operator can fix a
file in one pass. Each field is declared once, on `Instance` (see `store.fieldspec`).
"""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from typing import Any

from transparent_md.store.fieldspec import SPEC, FieldSpec, Flag, spec
from transparent_md.store.sshkey import openssh_key_problem

# EC2 refuses user-data over 16 KiB; clients and tools assume that bound.
MAX_USER_DATA_BYTES = 16 * 1024
# Linux interface names are at most IFNAMSIZ-1 = 15 bytes.
MAX_IFNAME = 15
# Linux interface indexes are positive ints.
MAX_IFINDEX = 2**31 - 1
# Long enough for any cloud's identifiers, short enough to stay a path segment.
MAX_ID_LENGTH = 64
# One line of metadata text; longer values are almost certainly a pasting mistake.
MAX_TEXT_LENGTH = 255
# Defaults chosen to look like EC2 so clients that insist on a value get one.
DEFAULT_AVAILABILITY_ZONE = "local-1a"
DEFAULT_INSTANCE_TYPE = "t3.micro"
DEFAULT_AMI_ID = "ami-00000000000000000"
DEFAULT_ACCOUNT_ID = "000000000000"
# uuid5 namespace for OpenStack uuids derived from instance ids (stable across runs).
# (uuid is imported where used: it costs a CLI call that never derives one ~30 ms.)
OPENSTACK_UUID_NAMESPACE = "5f0d3b6e-3f57-4c1e-9f63-1a6f2f0c7a11"

_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
_IFNAME_RE = re.compile(r"^[^\s/:]+$")
_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")
_KEY_NAME_RE = re.compile(r"^[^\s=/]+$")
_IAM_ROLE_RE = re.compile(r"^[\w+=,.@-]+$")

# How deep the JSON fields (vendor_data, network_data) may nest. OpenStack's documents
# nest a handful of levels; a deeper one only exhausts the stack of whatever reads it
# recursively (the JSON and YAML encoders behind `instance show`, the responder).
MAX_JSON_DEPTH = 64
DEEP_JSON_PROBLEM = (f"nests deeper than {MAX_JSON_DEPTH} levels (JSON fields are limited "
                     "so that every reader can walk them)")

# Ends the message for text that YAML turned into a number; an import adds the spelling.
QUOTE_IT = "quote it"
UNBOUND_PROBLEM = (
    "a record with neither a MAC nor a bridge/port binding would answer on every bridge "
    "to whichever guest claims its IP; add its MAC (--mac, mac:) or bind it with "
    "--bridge/--port (bridge:, port:)"
)

# The fields a neighbour must never read, as messages name them.
SECRET_FIELDS = (("iam", "IAM credentials"), ("user_data", "user-data"))
SECRETS_NEED_MAC = (
    "a record with {secrets} bound to no port needs its MAC: matched by IP and bridge "
    "alone, it is read by any guest on that bridge that adds the IP to its interface, "
    "keeping its own MAC (MAC anti-spoofing does not stop that); add its MAC (--mac, "
    "mac:) or bind it to its port (instance bind, port:)"
)


class RecordError(ValueError):
    """A record failed validation; the message names record, field and problem.

    `errors` holds every problem found in the record, this one first.
    """

    def __init__(self, record: str, field: str | None, problem: str,
                 more: tuple[RecordError, ...] = ()) -> None:
        self.record = record
        self.field = field
        self.problem = problem
        self.errors: tuple[RecordError, ...] = (self, *more)
        where = f"record {record}" + (f", field '{field}'" if field else "")
        self.message = f"{where}: {problem}"  # this problem alone, on one line
        super().__init__("\n".join([self.message, *(e.message for e in more)]))


@dataclass(frozen=True, slots=True)
class IamRole:
    """An IAM role and the temporary credentials served for it."""

    role: str
    access_key_id: str
    secret_access_key: str
    token: str
    expiration: str  # ISO 8601, e.g. 2030-01-01T00:00:00Z (botocore parses it)
    last_updated: str = "1970-01-01T00:00:00Z"


_IAM_REQUIRED = tuple(f.name for f in dataclasses.fields(IamRole)
                      if f.default is dataclasses.MISSING)
_IAM_KEYS = tuple(f.name for f in dataclasses.fields(IamRole))


@dataclass(frozen=True, slots=True)
class Instance:
    """One guest's metadata. Immutable: the responder shares it between requests.

    Every field's file key, check, CLI flags and documentation are declared here, once.
    """

    instance_id: str = spec(
        dataclasses.MISSING, key="instance_id", check="identifier", required=True,
        meaning="required; 1-64 letters, digits, `._:-`; positional on the command line")
    mac: str | None = spec(
        key="mac", check="mac",
        meaning="the guest's MAC; a record needs a MAC or a bridge/port binding, and one "
                "with IAM credentials or user-data a MAC or a port",
        flags=(Flag("--mac", "guest MAC address, e.g. 52:54:00:12:34:56", "MAC"),))
    ip: str | None = spec(
        key="ip", check="ipv4", meaning="the guest's IPv4 address (`local-ipv4`); "
        "a record needs a MAC, an IP or both",
        flags=(Flag("--ip", "guest IPv4 address (local-ipv4)", "IP"),))
    ipv6: tuple[str, ...] = spec(
        (), key="ipv6", check="ipv6_list", default="none", omit_empty=True,
        meaning="list of the guest's global or unique-local IPv6 addresses (EC2 `ipv6`, "
                "`ipv6s`); an IPv6 guest is answered only by a record that lists IPv6 "
                "addresses: from one of them, or from its link-local address when the "
                "record has a MAC",
        flags=(Flag("--ipv6", "guest IPv6 address (repeatable); also lets the guest ask "
                    "from its link-local address", "IPV6", "list"),))
    bridge: str | None = spec(
        key="bridge", check="ifname", meaning="answer only on this bridge",
        flags=(Flag("--bridge", "only answer this guest on this bridge (e.g. br0)", "BRIDGE"),))
    port: str | None = spec(
        key="port", check="ifname",
        meaning="answer only on this bridge port: the link that has this name when the "
                "binding is written (parked if there is none); what makes a copied MAC and "
                "IP useless",
        flags=(Flag("--port", "only answer this guest on this bridge port (e.g. tap3, "
                    "vnet0): the link that has the name now (parked if none has); records "
                    "with credentials or user-data should have one", "PORT"),))
    port_ifindex: int | None = spec(
        key="port_ifindex", check="ifindex",
        meaning="the bound port's link: its ifindex in the binder's network namespace, "
                "set when the binding is written (a re-created port of the same name has "
                "another); a `port` without it serves nobody until bound again",
        flags=())
    parked: bool = spec(
        False, key="parked", check="boolean", default="`false`", omit_empty=True,
        meaning="`true`: kept but served to nobody (a stopped VM); binding it to its port "
                "serves it again",
        flags=(Flag("--parked", "serve the record to nobody until it is bound again "
                    "(instance bind)", None, "true"),
               Flag("--unparked", "serve the record again by what it is bound to", None,
                    "false")))
    hostname: str = spec(
        "", key="hostname", check="hostname", default="the instance id",
        derive=lambda v: v.get("instance_id", ""), meaning="EC2 `hostname`",
        flags=(Flag("--hostname", "hostname (default: the instance id)", "NAME"),))
    local_hostname: str = spec(
        "", key="local_hostname", check="hostname", default="`hostname`",
        derive=lambda v: v.get("hostname", ""), meaning="EC2 `local-hostname`",
        flags=(Flag("--local-hostname", "local-hostname (default: --hostname)", "NAME"),))
    availability_zone: str = spec(
        DEFAULT_AVAILABILITY_ZONE, key="availability_zone", check="zone",
        default=f"`{DEFAULT_AVAILABILITY_ZONE}`",
        meaning="placement; the region is the zone minus its last letter",
        flags=(Flag("--availability-zone", "availability zone, e.g. eu-west-1a; region = "
                    f"zone minus its last letter (default {DEFAULT_AVAILABILITY_ZONE})", "ZONE"),))
    instance_type: str = spec(
        DEFAULT_INSTANCE_TYPE, key="instance_type", check="text",
        default=f"`{DEFAULT_INSTANCE_TYPE}`", meaning="EC2 `instance-type`",
        flags=(Flag("--instance-type", f"instance type (default {DEFAULT_INSTANCE_TYPE})",
                    "TYPE"),))
    ami_id: str = spec(
        DEFAULT_AMI_ID, key="ami_id", check="text", default=f"`{DEFAULT_AMI_ID}`",
        meaning="EC2 `ami-id`",
        flags=(Flag("--ami-id", f"image id (default {DEFAULT_AMI_ID})", "AMI"),))
    reservation_id: str = spec(
        "", key="reservation_id", check="text", default="`r-<instance id>`",
        derive=lambda v: f"r-{v.get('instance_id', '')}", meaning="EC2 `reservation-id`",
        flags=(Flag("--reservation-id", "reservation id (default r-<instance id>)", "ID"),))
    launch_index: int = spec(
        0, key="launch_index", check="count", default="0", meaning="EC2 `ami-launch-index`",
        flags=(Flag("--launch-index", "ami-launch-index (default 0)", "N", "int"),))
    account_id: str = spec(
        DEFAULT_ACCOUNT_ID, key="account_id", check="text", default=f"`{DEFAULT_ACCOUNT_ID}`",
        meaning="owner account id (identity document); quote it in YAML",
        flags=(Flag("--account-id", f"owner account id (default {DEFAULT_ACCOUNT_ID})",
                    "ACCOUNT"),))
    public_ipv4: str | None = spec(
        key="public_ipv4", check="ipv4", meaning="EC2 `public-ipv4`",
        flags=(Flag("--public-ipv4", "public IPv4 address", "IP"),))
    public_hostname: str | None = spec(
        key="public_hostname", check="hostname", meaning="EC2 `public-hostname`",
        flags=(Flag("--public-hostname", "public hostname", "NAME"),))
    security_groups: tuple[str, ...] = spec(
        (), key="security_groups", check="names", default="none",
        meaning="list of EC2 security group names",
        flags=(Flag("--security-group", "security group name (repeatable)", "NAME", "list"),))
    ssh_keys: tuple[tuple[str, str], ...] = spec(  # (name, key) in file order
        (), key="ssh_keys", check="ssh_keys", default="none",
        meaning="mapping name → one-line OpenSSH public key",
        flags=(Flag("--ssh-key", "OpenSSH public key under a name (repeatable); served as "
                    "public-keys/0=NAME and OpenStack public_keys", "NAME=KEY", "pairs"),
               Flag("--ssh-key-file", "like --ssh-key, reading the key from PATH",
                    "NAME=PATH", "pair_files")))
    user_data: bytes | None = spec(
        key="user_data", check="user_data", aliases=("user_data_base64",),
        meaning=f"text, or base64 bytes as `user_data_base64`; at most "
                f"{MAX_USER_DATA_BYTES // 1024} KiB (larger is refused)",
        flags=(Flag("--user-data-file",
                    f"user-data, read as bytes (at most {MAX_USER_DATA_BYTES} bytes)",
                    "PATH", "bytes_file"),))
    vendor_data: Any = spec(
        key="vendor_data", check="anything",
        meaning="any JSON value: OpenStack `vendor_data.json` (and `{\"static\": …}` in "
                "`vendor_data2.json`)",
        flags=(Flag("--vendor-data-file", "OpenStack vendor data (YAML or JSON document)",
                    "PATH", "document_file"),))
    openstack_uuid: str = spec(
        "", key="openstack.uuid", check="uuid", default="derived from the instance id",
        derive=lambda v: _derived_uuid(v.get("instance_id", "")),
        show_derived=True, meaning="OpenStack `uuid`",
        flags=(Flag("--openstack-uuid", "OpenStack uuid (default derived from the instance "
                    "id)", "UUID"),))
    openstack_project_id: str = spec(
        "", key="openstack.project_id", check="text", omit_empty=True,
        meaning="OpenStack `project_id`",
        flags=(Flag("--project-id", "OpenStack project_id", "ID"),))
    openstack_meta: tuple[tuple[str, str], ...] = spec(
        (), key="openstack.meta", check="text_pairs", omit_empty=True, default="none",
        meaning="OpenStack `meta`: text → text",
        flags=(Flag("--meta", "OpenStack meta entry (repeatable)", "KEY=VALUE", "pairs"),))
    gce_project_id: str = spec(
        "", key="gce.project_id", check="text", omit_empty=True,
        default="the OpenStack project id, else `project-<account id>`",
        meaning="GCE `project/project-id`",
        flags=(Flag("--gce-project-id", "GCE project id", "ID"),))
    gce_numeric_project_id: int = spec(
        0, key="gce.numeric_project_id", check="count", omit_empty=True,
        default="the account id when it is a number, else derived from the project id",
        meaning="GCE `project/numeric-project-id`",
        flags=(Flag("--gce-numeric-project-id", "GCE numeric project id", "N", "int"),))
    gce_attributes: tuple[tuple[str, str], ...] = spec(
        (), key="gce.attributes", check="text_pairs", omit_empty=True, default="none",
        meaning="GCE `instance/attributes/` entries beside `ssh-keys` and `user-data`: "
                "text → text",
        flags=(Flag("--gce-attribute", "GCE instance attribute (repeatable)", "KEY=VALUE",
                    "pairs"),))
    network_data: Any = spec(
        key="network_data", check="document", default="one DHCP link on the guest's MAC",
        meaning="OpenStack `network_data.json` (a mapping)",
        flags=(Flag("--network-data-file", "OpenStack network_data.json to serve instead of "
                    "the generated one-DHCP-link document", "PATH", "document_file"),))
    iam: IamRole | None = spec(
        key="iam", check="iam",
        meaning=f"IAM role and credentials: {', '.join(f'`{k}`' for k in _IAM_KEYS)} "
                "(times in ISO 8601); records with credentials should be bound to a port",
        flags=(Flag("--iam-file", "IAM role and credentials as YAML/JSON: "
                    + ", ".join(_IAM_KEYS), "PATH", "document_file"),))
    imdsv2_required: bool = spec(
        False, key="imdsv2_required", check="boolean", default="`false`",
        meaning="`true`: token-less (IMDSv1) EC2 requests get 401",
        flags=(Flag("--imdsv2-required", "refuse token-less (IMDSv1) requests with 401",
                    None, "true"),
               Flag("--imdsv2-optional", "allow IMDSv1 (the default)", None, "false")))

    @property
    def region(self) -> str:
        """Region as clients compute it: the availability zone minus its last letter."""
        return self.availability_zone[:-1]

    def to_mapping(self) -> dict[str, Any]:
        """The record as a file would spell it (inverse of `parse_record`)."""
        out: dict[str, Any] = {}
        values: dict[str, Any] = {}
        for name, field_spec in record_specs():
            value = values[name] = getattr(self, name)
            if value is None or (field_spec.omit_empty and not value):
                continue
            if (field_spec.derive is not None and not field_spec.show_derived
                    and value == field_spec.derive(values)):
                continue  # a default that follows other fields stays implicit
            key, file_value = _file_form(field_spec, value)
            target = out.setdefault(field_spec.section, {}) if field_spec.section else out
            target[key] = file_value
        return out


def record_specs() -> tuple[tuple[str, FieldSpec], ...]:
    """(attribute, FieldSpec) of every Instance field, in declaration order."""
    return _SPECS


_SPECS = tuple((f.name, f.metadata[SPEC]) for f in dataclasses.fields(Instance))
# Every key a record file may use: top-level keys, sections and aliases.
FIELDS = tuple(dict.fromkeys(
    key for _, s in _SPECS for key in (s.section or s.key, *s.aliases)))
_SECTIONS = {s.section: tuple(x.member for _, x in _SPECS if x.section == s.section)
             for _, s in _SPECS if s.section}


def _file_form(field_spec: FieldSpec, value: Any) -> tuple[str, Any]:
    """(key, value) as a file spells the field's value."""
    check = field_spec.check
    if check in ("names", "ipv6_list"):
        return field_spec.member, list(value)
    if check in ("ssh_keys", "text_pairs"):
        return field_spec.member, dict(value)
    if check == "iam":
        return field_spec.member, asdict(value)
    if check == "user_data":
        try:
            return field_spec.member, value.decode("utf-8")
        except UnicodeDecodeError:
            return field_spec.aliases[0], base64.b64encode(value).decode()
    return field_spec.member, value


def normalise_key(key: Any) -> Any:
    """Accept `instance-id` as well as `instance_id` (EC2 spells paths with dashes)."""
    return key.replace("-", "_") if isinstance(key, str) else key


def parse_record(raw: Any, label: str | None = None, *, stored: bool = False) -> Instance:
    """Validate one record mapping and build an `Instance`.

    `label` names the record in errors (e.g. "#3"); the instance id is added when known.
    Every problem is collected; the RecordError raised lists them all. `stored` reads a
    record already in the store: one written before the binding rule existed still
    loads, so it can be listed, fixed or removed (the responder never serves it).
    """
    label = label or "?"
    if not isinstance(raw, Mapping):
        raise RecordError(label, None, f"must be a mapping of fields, got {_kind(raw)}")
    data = {normalise_key(k): v for k, v in raw.items()}
    instance_id = data.get("instance_id")
    if isinstance(instance_id, str) and instance_id:
        label = f"{label} ({instance_id})" if label != instance_id else label
    return _Parser(label, data).build(require_binding=not stored)


def _derived_uuid(instance_id: str) -> str:
    import uuid

    return str(uuid.uuid5(uuid.UUID(OPENSTACK_UUID_NAMESPACE), instance_id))


def is_unbound(record: Any) -> bool:
    """True for a record with neither MAC nor bridge/port: it would answer anywhere."""
    return record.mac is None and record.bridge is None and record.port is None


def as_served(record: Instance) -> Instance:
    """A stored record as it may be served: one that breaks `binding_problem` (written
    before that rule existed, or around our tools) is parked, so it answers nobody
    until it is fixed and bound again."""
    if record.parked or binding_problem(record) is None or is_unbound(record):
        return record
    return dataclasses.replace(record, parked=True)


def secrets_of(record: Any) -> list[str]:
    """What a record holds that a neighbour must never read, as the warnings name it."""
    return [name for attribute, name in SECRET_FIELDS
            if getattr(record, attribute, None) is not None]


def binding_problem(record: Any) -> tuple[str, str] | None:
    """(field, problem) if the record may not be stored as it is bound, else None.

    The one rule every writer applies (parse_record for new records, the stores' put
    for whatever reaches them): a record must be bound to something, and one holding
    secrets that is served without a port binding must be found by its MAC, since an
    IP is claimed by any neighbour that adds it, whatever the hypervisor filters.
    """
    if is_unbound(record):
        return "mac", UNBOUND_PROBLEM
    secrets = secrets_of(record)
    if (secrets and record.mac is None and record.port is None
            and not getattr(record, "parked", False)):
        return "mac", SECRETS_NEED_MAC.format(secrets=" and ".join(secrets))
    return None


class _Problem(Exception):
    """One field's problem, raised by a check and collected by `_Parser.build`."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(problem)
        self.field = field
        self.problem = problem


class _Parser:
    """Field-by-field checks, each named by its FieldSpec's `check`."""

    def __init__(self, label: str, data: dict[str, Any]) -> None:
        self.label = label
        self.data = data

    def build(self, *, require_binding: bool) -> Instance:
        problems: list[_Problem] = []
        for key in self.data:
            if key not in FIELDS:
                problems.append(_Problem(str(key), "unknown field (known fields: "
                                                   f"{', '.join(FIELDS)})"))
        sections = {}
        for section, members in _SECTIONS.items():
            try:
                sections[section] = self.section(section, members)
            except _Problem as problem:
                problems.append(problem)
                sections[section] = {}
        values: dict[str, Any] = {}
        for name, field_spec in record_specs():
            source = sections[field_spec.section] if field_spec.section else self.data
            try:
                value = self.field(field_spec, source)
            except _Problem as problem:
                problems.append(problem)
                value = None
            if value is None and field_spec.derive is not None:
                value = field_spec.derive(values)
            if value is not None:
                values[name] = value
        if values.get("port_ifindex") is not None and values.get("port") is None:
            problems.append(_Problem("port_ifindex", "names the link of a port binding; "
                                                     "give the port too (port:)"))
        if (values.get("mac") is None and values.get("ip") is None and not values.get("ipv6")
                and not _named(problems, "mac", "ip", "ipv6")):
            problems.append(_Problem("mac", "a record needs a MAC or an address (IP, IPv6) to "
                                            "be found"))
        elif require_binding and not _named(problems, "mac", "bridge", "port",
                                            *(a for a, _ in SECRET_FIELDS)):
            problem = binding_problem(_Fields(values))
            if problem is not None:
                problems.append(_Problem(*problem))
        if problems:
            errors = [RecordError(self.label, p.field, p.problem) for p in problems]
            raise RecordError(self.label, problems[0].field, problems[0].problem,
                              tuple(errors[1:]))
        return Instance(**values)

    def field(self, field_spec: FieldSpec, source: Mapping[str, Any]) -> Any:
        """The checked value of one field, None when absent."""
        if field_spec.check == "user_data":
            return self.user_data(source, field_spec.member, field_spec.aliases[0])
        value = source.get(field_spec.member)
        if value is None:
            if field_spec.required:
                raise _Problem(field_spec.key, "is required")
            return None
        check = getattr(self, f"check_{field_spec.check}")
        return check(field_spec.key, value)

    def section(self, name: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        value = self.data.get(name)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise _Problem(name, f"must be a mapping, got {_kind(value)}")
        value = {normalise_key(k): v for k, v in value.items()}
        for key in value:
            if key not in allowed:
                raise _Problem(f"{name}.{key}", f"unknown field (known: {', '.join(allowed)})")
        return value

    # -- scalar checks: (key, value present) -> checked value ------------------------

    def check_text(self, key: str, value: Any) -> str:
        _refuse_number(key, value)
        if not isinstance(value, str):
            raise _Problem(key, f"must be text, got {_kind(value)}")
        if not value or "\n" in value or "\r" in value or len(value) > MAX_TEXT_LENGTH:
            raise _Problem(key, "must be one non-empty line of at most "
                                f"{MAX_TEXT_LENGTH} characters")
        return value

    def check_identifier(self, key: str, value: Any) -> str:
        _refuse_number(key, value)
        if not isinstance(value, str) or not _ID_RE.match(value) or len(value) > MAX_ID_LENGTH:
            raise _Problem(key, f"{value!r} must be 1-{MAX_ID_LENGTH} letters, digits, "
                                "'.', '_', ':' or '-', starting with a letter or digit")
        return value

    def check_hostname(self, key: str, value: Any) -> str:
        text = self.check_text(key, value)
        if not _HOSTNAME_RE.match(text):
            raise _Problem(key, f"{text!r} is not a host name")
        return text

    def check_zone(self, key: str, value: Any) -> str:
        zone = self.check_text(key, value)
        if len(zone) < 2 or not zone[-1].isalpha():
            raise _Problem(key, f"{zone!r} must end with a zone letter (region = zone minus it)")
        return zone

    def check_mac(self, key: str, value: Any) -> str:
        _refuse_number(key, value)
        text = str(value).strip().lower().replace("-", ":")
        if not _MAC_RE.match(text):
            raise _Problem(key, f"{value!r} is not a MAC address like 52:54:00:12:34:56")
        if int(text[:2], 16) & 1:
            raise _Problem(key, f"{text} is a multicast or broadcast MAC; a guest's MAC is "
                                "unicast (its first octet is even)")
        if text == "00:00:00:00:00:00":
            raise _Problem(key, "00:00:00:00:00:00 is no guest's MAC")
        return text

    def check_ipv4(self, key: str, value: Any) -> str:
        _refuse_number(key, value)
        try:
            return str(ipaddress.IPv4Address(str(value)))
        except ValueError:
            raise _Problem(key, f"{value!r} is not a dotted IPv4 address") from None

    def check_ipv6_list(self, key: str, value: Any) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise _Problem(key, "must be a list of IPv6 addresses")
        addresses: list[str] = []
        for item in value:
            _refuse_number(key, item)
            try:
                address = ipaddress.IPv6Address(str(item))
            except ValueError:
                raise _Problem(key, f"{item!r} is not an IPv6 address") from None
            if (address.is_multicast or address.is_unspecified or address.is_loopback
                    or address.ipv4_mapped is not None):
                raise _Problem(key, f"{item!r} is not a unicast IPv6 address")
            if address.is_link_local:
                raise _Problem(key, f"{item!r} is link-local: list global or unique-local "
                                    "addresses (link-local ones are matched by MAC)")
            if str(address) in addresses:
                raise _Problem(key, f"{item!r} is listed twice")
            addresses.append(str(address))
        return tuple(addresses)

    def check_ifname(self, key: str, value: Any) -> str:
        _refuse_number(key, value)
        if not isinstance(value, str) or not _IFNAME_RE.match(value) or len(value) > MAX_IFNAME:
            raise _Problem(key, f"{value!r} is not a Linux interface name "
                                f"(1-{MAX_IFNAME} characters, no '/', ':' or space)")
        return value

    def check_uuid(self, key: str, value: Any) -> str:
        import uuid

        _refuse_number(key, value)
        try:
            return str(uuid.UUID(str(value)))
        except ValueError:
            raise _Problem(key, f"{value!r} is not a UUID") from None

    def check_ifindex(self, key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not (
                0 < value <= MAX_IFINDEX):
            raise _Problem(key, f"must be an interface index 1-{MAX_IFINDEX}, got {value!r}")
        return value

    def check_boolean(self, key: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise _Problem(key, f"must be true or false, got {value!r}")
        return value

    def check_count(self, key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise _Problem(key, f"must be a whole number >= 0, got {value!r}")
        return value

    # -- structured checks ---------------------------------------------------------

    def check_anything(self, key: str, value: Any) -> Any:
        if json_depth_exceeds(value, MAX_JSON_DEPTH):
            raise _Problem(key, DEEP_JSON_PROBLEM)
        return value

    def check_document(self, key: str, value: Any) -> Any:
        if not isinstance(value, Mapping):
            raise _Problem(key, "must be a mapping (OpenStack network_data.json)")
        return self.check_anything(key, value)

    def check_names(self, key: str, value: Any) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(
            isinstance(g, str) and g and "\n" not in g for g in value
        ):
            raise _Problem(key, "must be a list of group names")
        return tuple(value)

    def check_ssh_keys(self, key: str, value: Any) -> tuple[tuple[str, str], ...]:
        if not isinstance(value, Mapping):
            raise _Problem(key, "must be a mapping of key name to public key")
        keys = []
        for name, text in value.items():
            if not isinstance(name, str) or not _KEY_NAME_RE.match(name):
                raise _Problem(f"{key}.{name}", "key name must have no space, '=' or '/'")
            if not isinstance(text, str) or not text.strip() or "\n" in text.strip():
                raise _Problem(f"{key}.{name}", "must be one line of OpenSSH public key")
            problem = openssh_key_problem(text.strip())
            if problem:
                raise _Problem(f"{key}.{name}", problem)
            keys.append((name, text.strip()))
        return tuple(keys)

    def check_text_pairs(self, key: str, value: Any) -> tuple[tuple[str, str], ...]:
        if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise _Problem(key, "must be a mapping of text to text")
        return tuple(value.items())

    def user_data(self, source: Mapping[str, Any], key: str, alias: str) -> bytes | None:
        text = source.get(key)
        encoded = source.get(alias)
        if text is not None and encoded is not None:
            raise _Problem(key, f"give {key} or {alias}, not both")
        if text is not None:
            if isinstance(text, bytes):  # YAML !!binary
                blob = text
            elif isinstance(text, str):
                blob = text.encode("utf-8")
            else:
                raise _Problem(key, f"must be text, got {_kind(text)}")
        elif encoded is not None:
            key = alias
            try:
                blob = base64.b64decode(str(encoded), validate=True)
            except ValueError:
                raise _Problem(key, "is not valid base64") from None
        else:
            return None
        if len(blob) > MAX_USER_DATA_BYTES:
            raise _Problem(key, f"is {len(blob)} bytes; user-data is limited to "
                                f"{MAX_USER_DATA_BYTES} bytes (16 KiB), as on EC2")
        return blob

    def check_iam(self, key: str, value: Any) -> IamRole | None:
        if not isinstance(value, Mapping):
            raise _Problem(key, f"must be a mapping, got {_kind(value)}")
        section = {normalise_key(k): v for k, v in value.items()}
        for member in section:
            if member not in _IAM_KEYS:
                raise _Problem(f"{key}.{member}", f"unknown field (known: {', '.join(_IAM_KEYS)})")
        if not section:
            return None
        values = {}
        for member in _IAM_KEYS:
            item = _timestamp_text(section.get(member))
            if item is None and member not in _IAM_REQUIRED:
                continue
            if not isinstance(item, str) or not item or "\n" in item:
                raise _Problem(f"{key}.{member}", "is required and must be one line of text")
            values[member] = item
        if not _IAM_ROLE_RE.match(values["role"]):
            raise _Problem(f"{key}.role", f"{values['role']!r} is not an IAM role name")
        for member in ("expiration", "last_updated"):
            if member not in values:
                continue
            try:
                datetime.fromisoformat(values[member].replace("Z", "+00:00"))
            except ValueError:
                raise _Problem(f"{key}.{member}",
                               f"{values[member]!r} is not an ISO 8601 time like "
                               "2030-01-01T00:00:00Z") from None
        return IamRole(**values)


class _Fields:
    """Checked values read as a record's attributes (absent: None), before it exists."""

    def __init__(self, values: dict[str, Any]) -> None:
        self._values = values

    def __getattr__(self, name: str) -> Any:
        return self._values.get(name)


def json_depth_exceeds(value: Any, limit: int) -> bool:
    """Whether lists and mappings nest more than `limit` levels in `value`; walked with
    a stack of its own, so any depth is measured without recursion."""
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, Mapping):
            children = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth >= limit:
            return True
        pending.extend((child, depth + 1) for child in children)
    return False


def _named(problems: list[_Problem], *fields: str) -> bool:
    return any(p.field in fields for p in problems)


def _refuse_number(key: str, value: Any) -> None:
    """YAML 1.1 turns some unquoted text into numbers (52:54:00:12:34:56 is base 60)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise _Problem(key, f"YAML read the unquoted value as the number {value!r}; "
                            f"{QUOTE_IT}")


def _timestamp_text(value: Any) -> Any:
    """YAML reads an unquoted 2030-01-01T00:00:00Z as a datetime; clients want the text."""
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value.strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, date):
        return value.strftime("%Y-%m-%dT00:00:00Z")
    return value


def _kind(value: Any) -> str:
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__
