"""A small etcd v3 client for the fleet store: endpoints failed over, one watch stream.

Requests go through `etcd3gw` (OpenStack's client for etcd's HTTP/JSON gateway), one
`Etcd3Client` per endpoint: it owns the HTTP session, TLS files and error mapping. What
it lacks is added here: trying the next member when one is down (a 3-member cluster
loses a member without a writer noticing), and a watch reader that reports what
etcd3gw's `Watcher` drops: the response headers (the revision a quiet watch has reached)
and the cancel with `compact_revision` (without it a watch on a compacted revision just
goes silent, where we must resynchronise).
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

from transparent_md.errors import UserError
from transparent_md.store.errors import StoreUnavailable
from transparent_md.store.etcd_url import EtcdTarget

log = logging.getLogger(__name__)

# One request to one member; a dead member refuses at once, a partitioned one takes this
# long before the next member is tried. Short: `instance add` with etcd down must fail
# in a few seconds, not hang.
REQUEST_TIMEOUT_S = 2.0
# Connecting a watch is a request like any other; reading it may wait forever (changes
# may be hours apart): the follower's liveness poll closes a stream that went stale.
WATCH_CONNECT_TIMEOUT_S = REQUEST_TIMEOUT_S
# etcd's API path for 3.4 and later (Debian 12 ships 3.4); set, so no /version probe.
API_PATH = "/v3/"


class EtcdUnavailable(StoreUnavailable):
    """No member answered: one clear line for the CLI, a state for the daemon."""


class WatchBroke(EtcdUnavailable):
    """The member a watch was on stopped answering; others may still answer."""

    def __init__(self, member: str, reason: str) -> None:
        super().__init__(f"watch on {member} broke: {reason}")
        self.member = member
        self.reason = reason


class EtcdError(UserError):
    """A member answered with an error that retrying elsewhere would not fix."""


def b64(text: str | bytes) -> str:
    data = text.encode() if isinstance(text, str) else text
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def prefix_end(prefix: str) -> str:
    """The range end covering every key that starts with `prefix`."""
    data = bytearray(prefix.encode())
    data[-1] += 1
    return data.decode()


# scripts/install and the .deb always carry it; a plain pip install may not.
ETCD_EXTRA_HINT = "pip install 'transparent-md[etcd]'"


class EtcdClient:
    """Requests to the first member that answers; the one that did is tried first next.

    `first_member` is where the first request goes: daemons pass a number of their own
    (a hash of their id), so their watches spread over the members and losing one
    member moves only its share."""

    def __init__(self, target: EtcdTarget, *, timeout: float = REQUEST_TIMEOUT_S,
                 first_member: int = 0) -> None:
        try:
            from etcd3gw.client import Etcd3Client
        except ImportError as exc:  # a pip install without the extra
            raise UserError(f"an etcd:// store needs the etcd extra (missing {exc.name}): "
                            f"{ETCD_EXTRA_HINT}") from exc

        self.target = target
        tls = target.tls
        self._members = [
            Etcd3Client(host=host, port=port, protocol="https" if target.secure else "http",
                        ca_cert=tls.cacert, cert_cert=tls.cert, cert_key=tls.key,
                        timeout=timeout, api_path=API_PATH)
            for host, port in target.endpoints
        ]
        self._first = first_member % len(self._members)
        self._watch_response = None
        self.watch_member = ""  # host:port the current (or last) watch is on
        self._lock = threading.Lock()

    def _order(self) -> list[int]:
        n = len(self._members)
        return [(self._first + i) % n for i in range(n)]

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST `body` to /v3/`path` on the first member that answers."""
        from etcd3gw import exceptions

        problems = []
        for index in self._order():
            member = self._members[index]
            try:
                reply = member.post(member.get_url(path), json=body)
            except (exceptions.ConnectionFailedError, exceptions.ConnectionTimeoutError,
                    exceptions.InternalServerError) as exc:
                problems.append(f"{member.host}:{member.port}: {_short(exc)}")
                continue
            except exceptions.Etcd3Exception as exc:
                raise EtcdError(f"etcd refused a request ({self.target.describe()}): "
                                f"{_short(exc)}") from exc
            self._first = index
            return reply
        raise EtcdUnavailable(f"etcd is unreachable at {self.target.describe()} "
                              f"({'; '.join(problems)}): nothing was read or written")

    def range(self, key: str, end: str | None = None, **options: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"key": b64(key), **options}
        if end is not None:
            body["range_end"] = b64(end)
        return self.call("kv/range", body)

    def txn(self, compare: list[dict], success: list[dict],
            failure: list[dict] | None = None) -> dict[str, Any]:
        return self.call("kv/txn", {"compare": compare, "success": success,
                                    "failure": failure or []})

    def watch(self, key: str, end: str, start_revision: int) -> Iterator[dict[str, Any]]:
        """Every watch response (`result` objects) from `start_revision` on, until the
        stream ends or `close_watch()`; raises EtcdUnavailable if no member takes it."""
        import requests

        body = {"create_request": {"key": b64(key), "range_end": b64(end),
                                   "start_revision": start_revision}}
        problems = []
        for index in self._order():
            member = self._members[index]
            try:
                response = member.session.post(member.get_url("watch"), json=body,
                                               stream=True,
                                               timeout=(WATCH_CONNECT_TIMEOUT_S, None))
            except requests.RequestException as exc:
                problems.append(f"{member.host}:{member.port}: {_short(exc)}")
                continue
            if response.status_code != 200:
                problems.append(f"{member.host}:{member.port}: HTTP {response.status_code}")
                response.close()
                continue
            self._first = index
            self.watch_member = f"{member.host}:{member.port}"
            with self._lock:
                self._watch_response = response
            try:
                yield from _results(response)
            except requests.RequestException as exc:
                raise WatchBroke(self.watch_member, _short(exc)) from exc
            finally:
                with self._lock:
                    self._watch_response = None
                response.close()
            return
        raise EtcdUnavailable(f"etcd is unreachable at {self.target.describe()} "
                              f"({'; '.join(problems)})")

    def close_watch(self) -> None:
        """End the current watch stream from another thread (its reader then returns)."""
        import socket

        with self._lock:
            response = self._watch_response
        if response is None:
            return
        try:  # shutting the socket down wakes a reader blocked in recv
            sock = response.raw._fp.fp.raw._sock  # http.client -> socket
            sock.shutdown(socket.SHUT_RDWR)
        except (AttributeError, OSError):
            pass
        response.close()

    def close(self) -> None:
        self.close_watch()
        for member in self._members:
            member.session.close()


def _results(response) -> Iterator[dict[str, Any]]:
    """The gateway sends one JSON object per line; chunks may split or join lines."""
    pending = b""
    for chunk in response.iter_content(chunk_size=None):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line.strip():
                message = json.loads(line)
                if "error" in message:
                    raise EtcdError(f"etcd watch error: {message['error']}")
                yield message.get("result", {})


# What a failed connection boils down to, found anywhere in the chain of causes.
_REASONS = (("refused", "connection refused"), ("reset by peer", "connection reset"),
            ("timed out", "timed out"), ("No route to host", "no route to host"),
            ("Name or service not known", "unknown host"),
            ("CERTIFICATE_VERIFY_FAILED", "TLS certificate not trusted (--etcd-cacert)"),
            ("SSL", "TLS handshake failed"))


def _short(exc: BaseException) -> str:
    """One short phrase for an error: requests and etcd3gw wrap the cause deeply."""
    chain: list[str] = []
    seen: BaseException | None = exc
    while seen is not None and len(chain) < 8:
        chain.append(" ".join(str(seen).split()))
        seen = seen.__cause__ or seen.__context__
    text = " ".join(chain)
    for needle, reason in _REASONS:
        if needle in text:
            return reason
    first = next((c for c in chain if c), type(exc).__name__)
    return first[:200]
