"""Minimal raw-socket HTTP client: tests need exact bytes, pipelining and HEAD."""

from __future__ import annotations

import socket
from dataclasses import dataclass


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


class Conn:
    """One client connection with its own receive buffer (for pipelined replies)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = b""

    def close(self) -> None:
        self.sock.close()

    def request(self, method: str, path: str, headers: dict[str, str] | None = None,
                body: bytes = b"", version: str = "HTTP/1.1") -> Response:
        self.send(method, path, headers, body, version)
        return self.read(head_only=method == "HEAD")

    def send(self, method: str, path: str, headers: dict[str, str] | None = None,
             body: bytes = b"", version: str = "HTTP/1.1") -> None:
        lines = [f"{method} {path} {version}", "Host: 169.254.169.254"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body or method in ("POST", "PUT"):
            lines.append(f"Content-Length: {len(body)}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)

    def read(self, head_only: bool = False) -> Response:
        while b"\r\n\r\n" not in self._buf:
            self._fill()
        head, _, rest = self._buf.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = 0 if head_only else int(headers.get("content-length", "0"))
        self._buf = rest
        while len(self._buf) < length:
            self._fill()
        body, self._buf = self._buf[:length], self._buf[length:]
        return Response(int(status_line.split()[1]), headers, body)

    def at_eof(self) -> bool:
        """True if the server closed the connection (and sent nothing more)."""
        return not self._buf and self.sock.recv(1) == b""

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"server closed; unread {self._buf!r}")
        self._buf += chunk


def exchange_raw(sock: socket.socket, payload: bytes) -> bytes:
    """Send `payload`, half-close, and return everything until the server closes."""
    sock.sendall(payload)
    sock.shutdown(socket.SHUT_WR)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk
