"""Talk to a running daemon's admin API over its unix socket (hooks, tests, scripts)."""

from __future__ import annotations

import http.client
import json
import socket
from dataclasses import dataclass
from typing import Any

from transparent_md.errors import UserError

# A local API answers in milliseconds; a hook must not hang libvirt if the daemon does.
DEFAULT_TIMEOUT_S = 5.0


class ApiUnreachable(UserError):
    """Nothing listens on the socket (no file, or refused): no request reached a daemon."""


# What connect() raises when no daemon is there; any other error may follow a request.
_NOBODY_LISTENING = (FileNotFoundError, ConnectionRefusedError)


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any
    headers: dict[str, str]

    @property
    def etag(self) -> str | None:
        return self.headers.get("etag")


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class ApiClient:
    """One keep-alive connection to the admin API at `path`."""

    def __init__(self, path: str, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.path = path
        self._conn = _UnixConnection(path, timeout)

    def request(self, method: str, target: str, body: Any = None,
                headers: dict[str, str] | None = None) -> Reply:
        data = None if body is None else json.dumps(body).encode()
        sent = {"Content-Type": "application/json"} if data is not None else {}
        sent.update(headers or {})
        try:
            self._conn.request(method, target, body=data, headers=sent)
            response = self._conn.getresponse()
            raw = response.read()
        except OSError as exc:
            self._conn.close()
            error = ApiUnreachable if isinstance(exc, _NOBODY_LISTENING) else UserError
            raise error(f"cannot reach the admin API at {self.path}: "
                            f"{exc.strerror or exc} (is `transparent-md run` running with "
                            "this --api path?)") from exc
        except http.client.HTTPException as exc:
            self._conn.close()
            raise UserError(f"the admin API at {self.path} answered garbage: {exc}") from exc
        return Reply(response.status, json.loads(raw) if raw else None,
                     {k.lower(): v for k, v in response.getheaders()})

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def raise_for(reply: Reply) -> Reply:
    """The reply, or a UserError carrying the API's one-line error message."""
    if reply.status >= 400:
        error = reply.body.get("error") if isinstance(reply.body, dict) else reply.body
        raise UserError(f"admin API: {reply.status}: {error}")
    return reply


__all__ = ["ApiClient", "ApiUnreachable", "Reply", "raise_for"]
