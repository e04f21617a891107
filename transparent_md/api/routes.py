"""The admin API's resources: an HTTP request in, a JSON response out, no sockets here.

    GET    /v1/instances[?mac=&bridge=&port=]  list (the import format: feed it to apply)
    PATCH  /v1/instances                      merge-patch several records in one transaction
    GET    /v1/instances/{id}                 one record; ETag: its revision
    PUT    /v1/instances/{id}                 create or replace (the import format)
    PATCH  /v1/instances/{id}                 JSON merge patch (RFC 7396)
    DELETE /v1/instances/{id}                 remove; removing an absent record is 204 too
    GET|PUT|DELETE /v1/instances/{id}/binding  the port binding: PUT binds to the link
                                              called "port" now (VM start), DELETE parks
                                              the record: served to nobody (VM stop)
    GET    /v1/status                         what `transparent-md status --json` prints

Writes honour If-Match (any listed ETag, or `*`) and If-None-Match: * (create only)
with 412. Errors are JSON `{"error", "record", "field"}`: 400 a request that is not
JSON or not understood, 404 no such record or resource, 409 a record clashing with
another (same id on create, or two records answering the same guest), 412 a stale
ETag, 422 a record that breaks the import rules (the same messages as `instance import`),
503 the store cannot be reached (etcd down): the reason in one line, nothing written.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from transparent_md.api import operations
from transparent_md.api.operations import Condition, NotFound, PreconditionFailed, Written
from transparent_md.errors import UserError
from transparent_md.store import Entry, RecordConflict, RecordError, StaleRevision, Store
from transparent_md.store.errors import StoreFault, StoreUnavailable
from transparent_md.store.policy import serving

API_VERSION = "v1"
JSON_TYPE = "application/json"
# Query parameters of the list and what record field each filters on.
LIST_FILTERS = ("mac", "bridge", "port")
# Members a binding body may carry.
BINDING_KEYS = ("port", "bridge")

_INSTANCES = re.compile(r"^/v1/instances/?$")
_INSTANCE = re.compile(r"^/v1/instances/(?P<id>[^/]+)$")
_BINDING = re.compile(r"^/v1/instances/(?P<id>[^/]+)/binding$")
_STATUS = re.compile(r"^/v1/status$")


@dataclass(frozen=True)
class Request:
    method: str
    target: str  # the request target as sent: path and query
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    body: bytes = b""


@dataclass
class Response:
    status: int
    body: Any = None  # JSON-able, or None for no body
    headers: dict[str, str] = field(default_factory=dict)

    def encoded(self) -> bytes:
        if self.body is None:
            return b""
        return json.dumps(self.body, indent=2).encode() + b"\n"


class ApiError(Exception):
    """A refusal with its status; the body is `{"error", "record", "field"}`."""

    def __init__(self, status: int, error: str, record: str | None = None,
                 field_name: str | None = None, headers: dict[str, str] | None = None,
                 problems: list[dict[str, Any]] | None = None) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.record = record
        self.field = field_name
        self.headers = headers or {}
        self.problems = problems

    def response(self) -> Response:
        body: dict[str, Any] = {"error": self.error, "record": self.record, "field": self.field}
        if self.problems:
            body["problems"] = self.problems
        return Response(self.status, body, self.headers)


def etag(revision: int) -> str:
    return f'"{revision}"'


class AdminApi:
    """Routes requests onto `operations` against one store (opened by the serving thread)."""

    def __init__(self, store: Store, status: Callable[[], dict] | None = None) -> None:
        self.store = store
        self.status = status

    def handle(self, request: Request) -> Response:
        try:
            return self._route(request)
        except ApiError as exc:
            return exc.response()
        except RecordError as exc:
            problems = [{"error": e.message, "field": e.field} for e in exc.errors]
            return ApiError(422, exc.message, exc.record, exc.field,
                            problems=problems if len(problems) > 1 else None).response()
        except NotFound as exc:
            return ApiError(404, str(exc), exc.instance_id).response()
        except RecordConflict as exc:
            return ApiError(409, str(exc), exc.instance_id, exc.field).response()
        except (PreconditionFailed, StaleRevision) as exc:
            headers = {}
            current = self.store.entry(exc.instance_id)
            if current is not None:
                headers["ETag"] = etag(current.revision)
            return ApiError(412, str(exc), exc.instance_id, headers=headers).response()
        except (StoreFault, StoreUnavailable) as exc:  # the store, not the request
            return ApiError(exc.status, str(exc)).response()
        except UserError as exc:  # e.g. a record without a binding, refused by the store
            return ApiError(422, str(exc)).response()

    def _route(self, request: Request) -> Response:
        parts = urlsplit(request.target)
        path = parts.path
        query = _query(parts.query)
        method = request.method
        if _INSTANCES.match(path):
            if method == "GET":
                return self._list(query)
            _no_query(query)
            if method == "PATCH":
                return self._patch_many(request)
            raise _not_allowed("GET, PATCH")
        _no_query(query)
        match = _INSTANCE.match(path) or _BINDING.match(path)
        if match:
            instance_id = unquote(match["id"])
            condition = _condition(request.headers)
            if match.re is _BINDING:
                return self._binding(method, instance_id, request, condition)
            if method == "GET":
                return _record(operations.get(self.store, instance_id))
            if method == "PUT":
                return _written(operations.put(self.store, instance_id, _json(request),
                                               condition))
            if method == "PATCH":
                return _written(operations.patch(self.store, instance_id, _json(request),
                                                 condition))
            if method == "DELETE":
                operations.delete(self.store, instance_id, condition)
                return Response(204)
            raise _not_allowed("GET, PUT, PATCH, DELETE")
        if _STATUS.match(path):
            if method != "GET":
                raise _not_allowed("GET")
            if self.status is None:
                raise ApiError(503, "no daemon status here (the API runs outside `run`)")
            return Response(200, self.status())
        raise ApiError(404, f"no resource {path} (the admin API is under /{API_VERSION}/: "
                            "instances, instances/ID, instances/ID/binding, status)")

    def _list(self, query: dict[str, str]) -> Response:
        unknown = sorted(set(query) - set(LIST_FILTERS))
        if unknown:
            raise ApiError(400, f"unknown query parameter {unknown[0]!r} (filters: "
                                f"{', '.join(LIST_FILTERS)})", field_name=unknown[0])
        wanted = dict(query)
        if "mac" in wanted:
            wanted["mac"] = wanted["mac"].strip().lower().replace("-", ":")
        entries = [e for e in self.store.entries()
                   if all(getattr(e.instance, k) == v for k, v in wanted.items())]
        return Response(200, {
            "instances": [e.instance.to_mapping() for e in entries],
            "revisions": {e.instance.instance_id: e.revision for e in entries},
        })

    def _patch_many(self, request: Request) -> Response:
        body = _json(request)
        if not isinstance(body, dict):
            raise ApiError(400, "PATCH /v1/instances takes a JSON object: instance id -> "
                                "merge patch of that record (null removes it)")
        changes = {k: v for k, v in body.items() if v is not None}
        gone = [k for k, v in body.items() if v is None]
        written = operations.patch_many(self.store, changes, gone)
        return Response(200, {
            "instances": [w.entry.instance.to_mapping() for w in written.values()],
            "revisions": {i: w.entry.revision for i, w in written.items()},
            "created": sorted(i for i, w in written.items() if w.created),
            "removed": sorted(gone),
        })

    def _binding(self, method: str, instance_id: str, request: Request,
                 condition: Condition) -> Response:
        if method == "GET":
            return _binding_response(operations.get(self.store, instance_id))
        if method == "PUT":
            body = _json(request)
            if not isinstance(body, dict) or not isinstance(body.get("port"), str) or set(
                    body) - set(BINDING_KEYS):
                raise ApiError(400, 'a binding is {"port": TAP} or {"port": TAP, "bridge": '
                                    'BRIDGE}', instance_id, "port")
            written = operations.bind(self.store, instance_id, body["port"],
                                      body.get("bridge"), condition)
            return _binding_response(written.entry)
        if method == "DELETE":
            return _binding_response(operations.park(self.store, instance_id,
                                                       condition).entry)
        raise _not_allowed("GET, PUT, DELETE")


def _record(entry: Entry, status: int = 200) -> Response:
    return Response(status, entry.instance.to_mapping(), {"ETag": etag(entry.revision)})


def _written(written: Written) -> Response:
    return _record(written.entry, 201 if written.created else 200)


def _binding_response(entry: Entry) -> Response:
    record = entry.instance
    return Response(200, {"mac": record.mac, "ip": record.ip, "bridge": record.bridge,
                          "port": record.port, "port_ifindex": record.port_ifindex,
                          "parked": record.parked, "serves": serving(record)},
                    {"ETag": etag(entry.revision)})


def _json(request: Request) -> Any:
    if not request.body:
        raise ApiError(400, "the request needs a JSON body")
    try:
        return json.loads(request.body)
    except UnicodeDecodeError:
        raise ApiError(400, "the body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"the body is not JSON: {exc.msg} at line {exc.lineno} column "
                            f"{exc.colno}") from None
    except RecursionError:
        raise ApiError(400, "the body is nested too deeply to be a record") from None


def _query(text: str) -> dict[str, str]:
    try:
        pairs = parse_qs(text, keep_blank_values=True, strict_parsing=bool(text))
    except ValueError:
        raise ApiError(400, f"malformed query string {text!r}") from None
    for key, values in pairs.items():
        if len(values) > 1:
            raise ApiError(400, f"query parameter {key!r} given twice", field_name=key)
    return {k: v[0] for k, v in pairs.items()}


def _no_query(query: dict[str, str]) -> None:
    if query:
        name = next(iter(query))
        raise ApiError(400, f"unknown query parameter {name!r}", field_name=name)


def _condition(headers: dict[str, str]) -> Condition:
    """If-Match: "3", "5" | * ; If-None-Match: * (create only)."""
    if_match = headers.get("if-match")
    if_none_match = headers.get("if-none-match")
    if if_match is not None and if_none_match is not None:
        raise ApiError(400, "give If-Match or If-None-Match, not both")
    if if_none_match is not None:
        if if_none_match.strip() != "*":
            raise ApiError(400, "If-None-Match takes only * (create the record only if absent)")
        return Condition(exists=False)
    if if_match is None:
        return operations.UNCONDITIONAL
    if if_match.strip() == "*":
        return Condition(exists=True)
    revisions = set()
    for tag in if_match.split(","):
        tag = tag.strip()
        if tag.startswith("W/"):
            tag = tag[2:]
        if len(tag) < 3 or tag[0] != '"' or tag[-1] != '"' or not tag[1:-1].isdigit():
            raise ApiError(400, f'If-Match {if_match!r}: expected ETags as sent, like "42"')
        revisions.add(int(tag[1:-1]))
    return Condition(revisions=frozenset(revisions))


def _not_allowed(allow: str) -> ApiError:
    return ApiError(405, f"method not allowed here (allowed: {allow})", headers={"Allow": allow})


__all__ = ["API_VERSION", "AdminApi", "ApiError", "Request", "Response", "etag"]
