"""The GCE metadata flavour (`/computeMetadata/v1/...`), rendered from the same record.

What Google's metadata server does and its clients (google-auth, cloud-init's GCE
datasource, the guest agent) rely on:
- a request must carry `Metadata-Flavor: Google` (else 403) and no `X-Forwarded-For`
  (else 403: a proxy in the guest is relaying); every reply carries
  `Metadata-Flavor: Google` and an `ETag`;
- a directory lists its children one a line, subdirectories with a trailing `/`;
- `?recursive=true` answers a directory as one JSON document (keys in camelCase, but
  for the free-form `attributes/`), or as `path value` lines with `alt=text`;
- `?wait_for_change=true` holds the request until the value's ETag differs from
  `last_etag` (or, without one, until it changes) or `timeout_sec` passes: see
  `longpoll`; this module only says what the value and its ETag are now.

The document is a tree of dicts (directories), lists (directories named 0, 1, ...) and
leaves (text, or numbers/booleans that JSON keeps as such).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime
from urllib.parse import parse_qs

from transparent_md.responder.http import JSON, TEXT, Reply, error_reply
from transparent_md.store.record import Instance

PREFIX = b"/computeMetadata/v1"
FLAVOR_HEADER_VALUE = b"Google"
_FLAVOR = b"Metadata-Flavor: Google\r\n"
# The root answers what Google's does; google-auth's ping reads only its status and header.
ROOT_LISTING = b"computeMetadata/\n"
# Only these directories keep their keys as written in recursive JSON.
FREE_FORM = frozenset({"attributes"})
# Google's own default scope list for a service account with the cloud-platform role.
DEFAULT_SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
# A token whose record gives no expiry is said to live this long (Google's own lifetime).
DEFAULT_TOKEN_LIFETIME_S = 3599
# Numeric ids are positive 63-bit integers, like Google's.
_ID_BITS = 63
NETWORK = "default"
# An address GCE gives every guest's metadata server name.
METADATA_HOSTNAME = "metadata.google.internal"

FORBIDDEN = error_reply(403, _FLAVOR)
NOT_FOUND = error_reply(404, _FLAVOR)
BAD_REQUEST = error_reply(400, _FLAVOR)


def numeric_id(text: str) -> int:
    """A stable positive number for `text` (instance id, project name)."""
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << _ID_BITS) - 1) or 1


def project_id(instance: Instance) -> str:
    """The record's GCE project, else its OpenStack one, else one named after its owner."""
    return (instance.gce_project_id or instance.openstack_project_id
            or f"project-{instance.account_id}")


def numeric_project_id(instance: Instance) -> int:
    """The record's number, else its owner account's, else one derived from the project."""
    if instance.gce_numeric_project_id:
        return instance.gce_numeric_project_id
    account = instance.account_id
    return int(account) if account.isdigit() and int(account) else numeric_id(
        project_id(instance))


def service_account_email(instance: Instance) -> str:
    role = instance.iam.role if instance.iam is not None else "default"
    return f"{role}@{project_id(instance)}.iam.gserviceaccount.com"


def document(instance: Instance, mac: str, ip: str) -> dict:
    """The whole tree a guest can read, as Google names its keys."""
    project = project_id(instance)
    number = numeric_project_id(instance)
    zone = instance.availability_zone
    name = instance.hostname.split(".", 1)[0]
    attributes: dict[str, str] = {}
    if instance.ssh_keys:
        attributes["ssh-keys"] = "\n".join(f"{user}:{key}" for user, key in instance.ssh_keys)
    if instance.user_data is not None:
        try:
            attributes["user-data"] = instance.user_data.decode()
        except UnicodeDecodeError:
            attributes["user-data"] = base64.b64encode(instance.user_data).decode()
            attributes["user-data-encoding"] = "base64"
    attributes.update(instance.openstack_meta)
    attributes.update(instance.gce_attributes)
    interface: dict = {"ip": ip, "mac": mac, "network": f"projects/{number}/networks/{NETWORK}",
                       "access-configs": []}
    if instance.public_ipv4:
        interface["access-configs"] = [{"external-ip": instance.public_ipv4,
                                        "type": "ONE_TO_ONE_NAT"}]
    tree: dict = {
        "instance": {
            "attributes": attributes,
            "hostname": (instance.hostname if "." in instance.hostname
                         else f"{name}.{zone}.c.{project}.internal"),
            "id": numeric_id(instance.instance_id),
            "image": f"projects/{project}/global/images/{instance.ami_id}",
            "machine-type": f"projects/{number}/machineTypes/{instance.instance_type}",
            "name": name,
            "network-interfaces": [interface],
            "service-accounts": {},
            "tags": list(instance.security_groups),
            "zone": f"projects/{number}/zones/{zone}",
        },
        "project": {"attributes": {}, "numeric-project-id": number, "project-id": project},
    }
    if instance.iam is not None:
        account = {"aliases": ["default"], "email": service_account_email(instance),
                   "scopes": list(DEFAULT_SCOPES)}
        tree["instance"]["service-accounts"] = {"default": account,
                                                account["email"]: account}
    return tree


def camel(key: str) -> str:
    head, *rest = key.split("-")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def as_json(node: object, free_form: bool = False) -> object:
    """`node` as recursive=true shows it: keys in camelCase except in free-form dicts."""
    if isinstance(node, dict):
        return {(k if free_form else camel(k)): as_json(v, k in FREE_FORM)
                for k, v in node.items()}
    if isinstance(node, list):
        return [as_json(v) for v in node]
    return node


def as_text(node: object, path: str = "") -> list[str]:
    """`node` as recursive=true&alt=text shows it: `path value` lines, leaves only."""
    if isinstance(node, dict):
        items = sorted(node.items())
    elif isinstance(node, list):
        items = [(str(i), v) for i, v in enumerate(node)]
    else:
        return [f"{path} {_leaf_text(node)}" if path else _leaf_text(node)]
    lines: list[str] = []
    for key, child in items:
        lines += as_text(child, f"{path}/{key}" if path else key)
    return lines


def listing(node: object) -> str:
    """A directory's children, a `/` after each subdirectory, one a line."""
    items = node.items() if isinstance(node, dict) else enumerate(node)  # type: ignore[union-attr]
    return "".join(f"{key}/\n" if isinstance(child, dict | list) else f"{key}\n"
                   for key, child in sorted(items, key=lambda kv: str(kv[0])))


def _leaf_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def lookup(tree: dict, path: str) -> object | None:
    """The node at `path` (segments below /computeMetadata/v1), or None."""
    node: object = tree
    for segment in (s for s in path.split("/") if s):
        if isinstance(node, dict):
            node = node.get(segment)
        elif isinstance(node, list) and segment.isdigit() and int(segment) < len(node):
            node = node[int(segment)]
        else:
            return None
        if node is None:
            return None
    return node


def etag(body: bytes) -> bytes:
    return hashlib.sha256(body).hexdigest()[:16].encode()


class TaggedReply(Reply):
    """A GCE reply and its ETag, which a long poll compares."""

    __slots__ = ("etag",)

    def __init__(self, body: bytes, content_type: bytes) -> None:
        self.etag = etag(body)
        super().__init__(200, body, content_type, _FLAVOR + b"ETag: " + self.etag + b"\r\n")


def reply(body: bytes, content_type: bytes = TEXT) -> Reply:
    """A 200 with the flavour header and the body's ETag."""
    return TaggedReply(body, content_type)


class Wait:
    """A `wait_for_change` request to hold: answer it once the value at `path` has
    another ETag than `etag`, or at `timeout_s` with the value as it is then."""

    __slots__ = ("path", "query", "etag", "timeout_s")

    def __init__(self, path: bytes, query: Query, etag: bytes, timeout_s: float) -> None:
        self.path, self.query, self.etag, self.timeout_s = path, query, etag, timeout_s


def token_document(instance: Instance, now: Callable[[], datetime]) -> bytes | None:
    """The default service account's access token: the record's IAM token, with the
    seconds left until its expiry (None: the record has no credentials)."""
    iam = instance.iam
    if iam is None:
        return None
    try:
        expires = datetime.fromisoformat(iam.expiration.replace("Z", "+00:00"))
        left = int((expires - now()).total_seconds())
    except ValueError:
        left = DEFAULT_TOKEN_LIFETIME_S
    return json.dumps({"access_token": iam.token, "expires_in": max(left, 0),
                       "token_type": "Bearer"}).encode()


def utc_now() -> datetime:
    return datetime.now(UTC)


class Query:
    """The query parameters Google's server honours, parsed once per request."""

    __slots__ = ("recursive", "alt", "wait_for_change", "last_etag", "timeout_sec")

    def __init__(self, raw: bytes) -> None:
        try:
            params = parse_qs(raw.decode("ascii"), max_num_fields=MAX_QUERY_FIELDS)
        except (UnicodeDecodeError, ValueError):
            params = {}
        first = {k.lower(): v[0] for k, v in params.items()}
        self.recursive = first.get("recursive", "").lower() == "true"
        self.alt = first.get("alt", "").lower()
        self.wait_for_change = first.get("wait_for_change", "").lower() == "true"
        self.last_etag = first.get("last_etag", "").encode() or None
        timeout = first.get("timeout_sec", "")
        self.timeout_sec = (min(int(timeout), MAX_WAIT_S) if timeout.isdigit()
                            and len(timeout) <= len(str(MAX_WAIT_S)) else None)


# Google caps a long poll's timeout_sec; a guest asking for more waits this long.
MAX_WAIT_S = 3600
# A long poll without timeout_sec is answered after this long, value changed or not
# (Google holds it "until the value changes"; a bound keeps a stuck guest's hold finite).
DEFAULT_WAIT_S = 300
# More query fields than any client sends is a guest probing the parser.
MAX_QUERY_FIELDS = 16
# Distinct (path, query) replies one view keeps; a guest inventing URLs costs little.
VIEW_MEMO_LIMIT = 256


class GceView:
    """One guest's GCE tree, built on its first GCE request (most guests never ask)."""

    __slots__ = ("_instance", "_mac", "_ip", "_tree", "_memo")

    def __init__(self, instance: Instance, mac: str, ip: str) -> None:
        self._instance, self._mac, self._ip = instance, mac, ip
        self._tree: dict | None = None
        self._memo: dict[tuple[bytes, bytes], Reply] = {}

    def answer(self, path: bytes, query: Query,
               now: Callable[[], datetime] = utc_now) -> Reply:
        """The reply to a GET of `path` (below /computeMetadata/v1, no slashes at the ends)."""
        if path == TOKEN_PATH:
            body = token_document(self._instance, now)  # time-dependent: never memoised
            return NOT_FOUND if body is None else reply(body, JSON)
        key = (path, query.recursive, query.alt)
        found = self._memo.get(key)
        if found is None:
            found = self._render(path, query)
            if len(self._memo) >= VIEW_MEMO_LIMIT:
                self._memo.clear()
            self._memo[key] = found
        return found

    def _render(self, path: bytes, query: Query) -> Reply:
        if self._tree is None:
            self._tree = document(self._instance, self._mac, self._ip)
        node = lookup(self._tree, path.decode("ascii", "replace"))
        if node is None:
            return NOT_FOUND
        if not isinstance(node, dict | list):
            return reply(_leaf_text(node).encode())
        if not query.recursive:
            return reply(listing(node).encode())
        if query.alt == "text":
            return reply("\n".join(as_text(node)).encode())
        free_form = path.rsplit(b"/", 1)[-1].decode("ascii", "replace") in FREE_FORM
        return reply(json.dumps(as_json(node, free_form)).encode(), JSON)


TOKEN_PATH = b"instance/service-accounts/default/token"
