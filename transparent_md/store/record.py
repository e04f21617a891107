"""An instance record and the rules a record must obey before it reaches the store.

Records arrive from YAML/JSON files and from CLI flags as plain mappings; `parse_record`
turns one into an immutable `Instance` or raises `RecordError` naming the record, the
field and what is wrong, so an operator can fix the file without guessing.
"""

from __future__ import annotations

import base64
import ipaddress
import re
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from typing import Any

# EC2 refuses user-data over 16 KiB; clients and tools assume that bound.
MAX_USER_DATA_BYTES = 16 * 1024
# Linux interface names are at most IFNAMSIZ-1 = 15 bytes.
MAX_IFNAME = 15
# Long enough for any cloud's identifiers, short enough to stay a path segment.
MAX_ID_LENGTH = 64
# Defaults chosen to look like EC2 so clients that insist on a value get one.
DEFAULT_AVAILABILITY_ZONE = "local-1a"
DEFAULT_INSTANCE_TYPE = "t3.micro"
DEFAULT_AMI_ID = "ami-00000000000000000"
DEFAULT_ACCOUNT_ID = "000000000000"
# uuid5 namespace for OpenStack uuids derived from instance ids (stable across runs).
OPENSTACK_UUID_NAMESPACE = uuid.UUID("5f0d3b6e-3f57-4c1e-9f63-1a6f2f0c7a11")

_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
_IFNAME_RE = re.compile(r"^[^\s/:]+$")
_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")
_KEY_NAME_RE = re.compile(r"^[^\s=/]+$")


class RecordError(ValueError):
    """A record failed validation; the message names record, field and problem."""

    def __init__(self, record: str, field: str | None, problem: str) -> None:
        self.record = record
        self.field = field
        self.problem = problem
        where = f"record {record}" + (f", field '{field}'" if field else "")
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True, slots=True)
class IamRole:
    """An IAM role and the temporary credentials served for it."""

    role: str
    access_key_id: str
    secret_access_key: str
    token: str
    expiration: str  # ISO 8601, e.g. 2030-01-01T00:00:00Z (botocore parses it)
    last_updated: str = "1970-01-01T00:00:00Z"


@dataclass(frozen=True, slots=True)
class Instance:
    """One guest's metadata. Immutable: the responder shares it between requests."""

    instance_id: str
    mac: str | None = None
    ip: str | None = None
    bridge: str | None = None
    port: str | None = None
    hostname: str = ""
    local_hostname: str = ""
    availability_zone: str = DEFAULT_AVAILABILITY_ZONE
    instance_type: str = DEFAULT_INSTANCE_TYPE
    ami_id: str = DEFAULT_AMI_ID
    reservation_id: str = ""
    launch_index: int = 0
    account_id: str = DEFAULT_ACCOUNT_ID
    public_ipv4: str | None = None
    public_hostname: str | None = None
    security_groups: tuple[str, ...] = ()
    ssh_keys: tuple[tuple[str, str], ...] = ()  # (name, key) in file order
    user_data: bytes | None = None
    vendor_data: Any = None
    openstack_uuid: str = ""
    openstack_project_id: str = ""
    openstack_meta: tuple[tuple[str, str], ...] = ()
    network_data: Any = None
    iam: IamRole | None = None
    imdsv2_required: bool = False

    @property
    def region(self) -> str:
        """Region as clients compute it: the availability zone minus its last letter."""
        return self.availability_zone[:-1]

    def to_mapping(self) -> dict[str, Any]:
        """The record as a file would spell it (inverse of `parse_record`)."""
        out: dict[str, Any] = {"instance_id": self.instance_id}
        raw = asdict(self)
        derived = {  # defaults that follow other fields stay implicit, so they keep following
            "hostname": self.instance_id,
            "local_hostname": self.hostname,
            "reservation_id": f"r-{self.instance_id}",
        }
        for name in ("mac", "ip", "bridge", "port", "hostname", "local_hostname",
                     "availability_zone", "instance_type", "ami_id", "reservation_id",
                     "launch_index", "account_id", "public_ipv4", "public_hostname"):
            if raw[name] is not None and raw[name] != derived.get(name):
                out[name] = raw[name]
        out["security_groups"] = list(self.security_groups)
        out["ssh_keys"] = dict(self.ssh_keys)
        if self.user_data is not None:
            try:
                out["user_data"] = self.user_data.decode("utf-8")
            except UnicodeDecodeError:
                out["user_data_base64"] = base64.b64encode(self.user_data).decode()
        if self.vendor_data is not None:
            out["vendor_data"] = self.vendor_data
        openstack: dict[str, Any] = {"uuid": self.openstack_uuid}
        if self.openstack_project_id:
            openstack["project_id"] = self.openstack_project_id
        if self.openstack_meta:
            openstack["meta"] = dict(self.openstack_meta)
        out["openstack"] = openstack
        if self.network_data is not None:
            out["network_data"] = self.network_data
        if self.iam is not None:
            out["iam"] = asdict(self.iam)
        out["imdsv2_required"] = self.imdsv2_required
        return out


FIELDS = (
    "instance_id", "mac", "ip", "bridge", "port", "hostname", "local_hostname",
    "availability_zone", "instance_type", "ami_id", "reservation_id", "launch_index",
    "account_id", "public_ipv4", "public_hostname", "security_groups", "ssh_keys",
    "user_data", "user_data_base64", "vendor_data", "openstack", "network_data", "iam",
    "imdsv2_required",
)
_OPENSTACK_FIELDS = ("uuid", "project_id", "meta")
_IAM_REQUIRED = ("role", "access_key_id", "secret_access_key", "token", "expiration")


def normalise_key(key: Any) -> Any:
    """Accept `instance-id` as well as `instance_id` (EC2 spells paths with dashes)."""
    return key.replace("-", "_") if isinstance(key, str) else key


def parse_record(raw: Any, label: str | None = None) -> Instance:
    """Validate one record mapping and build an `Instance`.

    `label` names the record in errors (e.g. "#3"); the instance id is added when known.
    """
    label = label or "?"
    if not isinstance(raw, Mapping):
        raise RecordError(label, None, f"must be a mapping of fields, got {_kind(raw)}")
    data = {normalise_key(k): v for k, v in raw.items()}
    instance_id = data.get("instance_id")
    if isinstance(instance_id, str) and instance_id:
        label = f"{label} ({instance_id})" if label != instance_id else label
    return _Parser(label, data).build()


class _Parser:
    """Field-by-field checks; each failure raises with the field's name."""

    def __init__(self, label: str, data: dict[str, Any]) -> None:
        self.label = label
        self.data = data

    def fail(self, field_name: str | None, problem: str) -> RecordError:
        return RecordError(self.label, field_name, problem)

    def build(self) -> Instance:
        unknown = [k for k in self.data if k not in FIELDS]
        if unknown:
            raise self.fail(str(unknown[0]), f"unknown field (known fields: {', '.join(FIELDS)})")
        instance_id = self.identifier("instance_id", required=True)
        mac = self.mac()
        ip = self.ipv4("ip")
        if mac is None and ip is None:
            raise self.fail("mac", "a record needs a MAC, an IP or both to be found")
        hostname = self.hostname("hostname") or instance_id
        zone = self.text("availability_zone") or DEFAULT_AVAILABILITY_ZONE
        if len(zone) < 2 or not zone[-1].isalpha():
            raise self.fail("availability_zone",
                            f"{zone!r} must end with a zone letter (region = zone minus it)")
        openstack = self.mapping("openstack", _OPENSTACK_FIELDS)
        return Instance(
            instance_id=instance_id,
            mac=mac,
            ip=ip,
            bridge=self.ifname("bridge"),
            port=self.ifname("port"),
            hostname=hostname,
            local_hostname=self.hostname("local_hostname") or hostname,
            availability_zone=zone,
            instance_type=self.text("instance_type") or DEFAULT_INSTANCE_TYPE,
            ami_id=self.text("ami_id") or DEFAULT_AMI_ID,
            reservation_id=self.text("reservation_id") or f"r-{instance_id}",
            launch_index=self.launch_index(),
            account_id=self.text("account_id") or DEFAULT_ACCOUNT_ID,
            public_ipv4=self.ipv4("public_ipv4"),
            public_hostname=self.hostname("public_hostname"),
            security_groups=self.security_groups(),
            ssh_keys=self.ssh_keys(),
            user_data=self.user_data(),
            vendor_data=self.data.get("vendor_data"),
            openstack_uuid=self.openstack_uuid(openstack, instance_id),
            openstack_project_id=self.nested_text(openstack, "openstack.project_id"),
            openstack_meta=self.openstack_meta(openstack),
            network_data=self.network_data(),
            iam=self.iam(),
            imdsv2_required=self.boolean("imdsv2_required"),
        )

    # -- scalar helpers -------------------------------------------------------------

    def text(self, name: str) -> str | None:
        value = self.data.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise self.fail(name, f"must be text, got {_kind(value)}")
        value = str(value)
        if not value or "\n" in value or "\r" in value or len(value) > 255:
            raise self.fail(name, "must be one non-empty line of at most 255 characters")
        return value

    def identifier(self, name: str, required: bool = False) -> str:
        value = self.data.get(name)
        if value is None:
            if required:
                raise self.fail(name, "is required")
            return ""
        if not isinstance(value, str) or not _ID_RE.match(value) or len(value) > MAX_ID_LENGTH:
            raise self.fail(name, f"{value!r} must be 1-{MAX_ID_LENGTH} letters, digits, "
                                  "'.', '_', ':' or '-', starting with a letter or digit")
        return value

    def hostname(self, name: str) -> str | None:
        value = self.text(name)
        if value is not None and not _HOSTNAME_RE.match(value):
            raise self.fail(name, f"{value!r} is not a host name")
        return value

    def mac(self) -> str | None:
        value = self.data.get("mac")
        if value is None:
            return None
        text = str(value).strip().lower().replace("-", ":")
        if not _MAC_RE.match(text):
            raise self.fail("mac", f"{value!r} is not a MAC address like 52:54:00:12:34:56")
        return text

    def ipv4(self, name: str) -> str | None:
        value = self.data.get(name)
        if value is None:
            return None
        try:
            return str(ipaddress.IPv4Address(str(value)))
        except ValueError:
            raise self.fail(name, f"{value!r} is not a dotted IPv4 address") from None

    def ifname(self, name: str) -> str | None:
        value = self.data.get(name)
        if value is None:
            return None
        if not isinstance(value, str) or not _IFNAME_RE.match(value) or len(value) > MAX_IFNAME:
            raise self.fail(name, f"{value!r} is not a Linux interface name "
                                  f"(1-{MAX_IFNAME} characters, no '/', ':' or space)")
        return value

    def boolean(self, name: str) -> bool:
        value = self.data.get(name, False)
        if not isinstance(value, bool):
            raise self.fail(name, f"must be true or false, got {value!r}")
        return value

    def launch_index(self) -> int:
        value = self.data.get("launch_index", 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.fail("launch_index", f"must be a whole number >= 0, got {value!r}")
        return value

    # -- structured fields ---------------------------------------------------------

    def mapping(self, name: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        value = self.data.get(name)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.fail(name, f"must be a mapping, got {_kind(value)}")
        value = {normalise_key(k): v for k, v in value.items()}
        for key in value:
            if key not in allowed:
                raise self.fail(f"{name}.{key}", f"unknown field (known: {', '.join(allowed)})")
        return value

    def nested_text(self, section: Mapping[str, Any], dotted: str) -> str:
        value = section.get(dotted.split(".", 1)[1])
        if value is None:
            return ""
        if not isinstance(value, str) or not value or "\n" in value:
            raise self.fail(dotted, "must be one non-empty line of text")
        return value

    def security_groups(self) -> tuple[str, ...]:
        value = self.data.get("security_groups", [])
        if not isinstance(value, list) or not all(
            isinstance(g, str) and g and "\n" not in g for g in value
        ):
            raise self.fail("security_groups", "must be a list of group names")
        return tuple(value)

    def ssh_keys(self) -> tuple[tuple[str, str], ...]:
        value = self.data.get("ssh_keys", {})
        if not isinstance(value, Mapping):
            raise self.fail("ssh_keys", "must be a mapping of key name to public key")
        keys = []
        for name, key in value.items():
            if not isinstance(name, str) or not _KEY_NAME_RE.match(name):
                raise self.fail(f"ssh_keys.{name}", "key name must have no space, '=' or '/'")
            if not isinstance(key, str) or not key.strip() or "\n" in key.strip():
                raise self.fail(f"ssh_keys.{name}", "must be one line of OpenSSH public key")
            keys.append((name, key.strip()))
        return tuple(keys)

    def user_data(self) -> bytes | None:
        text = self.data.get("user_data")
        encoded = self.data.get("user_data_base64")
        if text is not None and encoded is not None:
            raise self.fail("user_data", "give user_data or user_data_base64, not both")
        if text is not None:
            if isinstance(text, bytes):  # YAML !!binary
                blob = text
            elif isinstance(text, str):
                blob = text.encode("utf-8")
            else:
                raise self.fail("user_data", f"must be text, got {_kind(text)}")
            name = "user_data"
        elif encoded is not None:
            try:
                blob = base64.b64decode(str(encoded), validate=True)
            except ValueError:
                raise self.fail("user_data_base64", "is not valid base64") from None
            name = "user_data_base64"
        else:
            return None
        if len(blob) > MAX_USER_DATA_BYTES:
            raise self.fail(name, f"is {len(blob)} bytes; user-data is limited to "
                                  f"{MAX_USER_DATA_BYTES} bytes (16 KiB), as on EC2")
        return blob

    def openstack_uuid(self, section: Mapping[str, Any], instance_id: str) -> str:
        value = section.get("uuid")
        if value is None:
            return str(uuid.uuid5(OPENSTACK_UUID_NAMESPACE, instance_id))
        try:
            return str(uuid.UUID(str(value)))
        except ValueError:
            raise self.fail("openstack.uuid", f"{value!r} is not a UUID") from None

    def openstack_meta(self, section: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
        value = section.get("meta", {})
        if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise self.fail("openstack.meta", "must be a mapping of text to text")
        return tuple(value.items())

    def network_data(self) -> Any:
        value = self.data.get("network_data")
        if value is not None and not isinstance(value, Mapping):
            raise self.fail("network_data", "must be a mapping (OpenStack network_data.json)")
        return value

    def iam(self) -> IamRole | None:
        section = self.mapping("iam", (*_IAM_REQUIRED, "last_updated"))
        if not section:
            return None
        values = {}
        for key in _IAM_REQUIRED:
            item = _timestamp_text(section.get(key))
            if not isinstance(item, str) or not item or "\n" in item:
                raise self.fail(f"iam.{key}", "is required and must be one line of text")
            values[key] = item
        if not re.match(r"^[\w+=,.@-]+$", values["role"]):
            raise self.fail("iam.role", f"{values['role']!r} is not an IAM role name")
        for key in ("expiration", "last_updated"):
            stamp = _timestamp_text(section.get(key))
            if stamp is None:
                continue
            try:
                datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
            except ValueError:
                raise self.fail(f"iam.{key}",
                                f"{stamp!r} is not an ISO 8601 time like "
                                "2030-01-01T00:00:00Z") from None
            values[key] = str(stamp)
        return IamRole(**values)


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
