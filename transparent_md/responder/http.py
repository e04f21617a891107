"""HTTP/1.1 wire pieces: status lines, limits, and responses prepared once as bytes.

A `Reply` is built when its record changes; the common case (GET on a keep-alive
HTTP/1.1 connection) is written to the socket as one prebuilt bytes object with no
per-request formatting. Rarer variants (HEAD, Connection: close, HTTP/1.0 keep-alive)
are a concatenation away.
"""

from __future__ import annotations

from functools import cache
from http import HTTPStatus

# Limits. A metadata request is a short GET: anything near these is abuse or a bug.
MAX_URL_BYTES = 2048  # longest real path is ~120 bytes; AWS refuses long URLs too.
MAX_HEADER_BYTES = 8192  # sum of header names and values, like many servers' 8 KiB.
MAX_BODY_BYTES = 4096  # only the OpenStack password (<= 255 bytes) has a body.

TEXT = b"text/plain"
JSON = b"application/json"
OCTETS = b"application/octet-stream"


@cache
def status_line(code: int) -> bytes:
    """b"HTTP/1.1 200 OK\\r\\n" for 200; made once per code: all of an instance's replies
    are built when it first asks (a boot storm's first request per guest), and an
    HTTPStatus lookup per reply was a measurable part of that (docs/benchmark.md)."""
    return b"HTTP/1.1 %d %s\r\n" % (code, HTTPStatus(code).phrase.encode())


_CLOSE = b"Connection: close\r\n"
_KEEP_ALIVE = b"Connection: keep-alive\r\n"


class Reply:
    """One prepared response; `keep_alive` is the complete bytes for the common case."""

    __slots__ = ("status", "body", "head", "keep_alive")

    def __init__(self, status: int, body: bytes, content_type: bytes = TEXT,
                 extra_headers: bytes = b"") -> None:
        self.status = status
        self.body = body
        self.head = (status_line(status) + b"Content-Type: " + content_type +
                     b"\r\nContent-Length: %d\r\n" % len(body) + extra_headers)
        self.keep_alive = self.head + b"\r\n" + body

    def render(self, *, head_only: bool, close: bool, http10: bool) -> bytes:
        """The response for this request's method and connection state."""
        if close:
            head = self.head + _CLOSE
        elif http10:
            head = self.head + _KEEP_ALIVE
        else:
            if not head_only:
                return self.keep_alive
            head = self.head
        return head + b"\r\n" if head_only else head + b"\r\n" + self.body


def error_reply(status: int, extra_headers: bytes = b"") -> Reply:
    """A plain-text error whose body is the status phrase (like AWS's IMDS)."""
    return Reply(status, HTTPStatus(status).phrase.encode(), TEXT, extra_headers)


NOT_FOUND = error_reply(404)
BAD_REQUEST = error_reply(400)
UNAUTHORIZED = error_reply(401)
FORBIDDEN = error_reply(403)
CONFLICT = error_reply(409)
METHOD_NOT_ALLOWED = error_reply(405, b"Allow: GET, HEAD, PUT, POST\r\n")
REQUEST_TIMEOUT = error_reply(408)
PAYLOAD_TOO_LARGE = error_reply(413)
URI_TOO_LONG = error_reply(414)
HEADERS_TOO_LARGE = error_reply(431)
# The identity's request bucket refills within a second at any sane rate.
TOO_MANY_REQUESTS = error_reply(429, b"Retry-After: 1\r\n")
SERVER_ERROR = error_reply(500)
