"""Oversized requests: too many header bytes, or too large a body.

Sends one request whose head carries --headers headers of --header-bytes each, or
whose body is --body bytes, while a second thread reads, so a status the server sends
before it has read everything is seen (a client that only reads after sending would
meet the reset instead). Reports what came back.

    ip netns exec NS python -m transparent_md.lab.attacks.oversize --headers 1000

Prints one JSON line: {"status", "received", "reset", "send_error"}.
"""

from __future__ import annotations

import argparse
import json
import socket
import threading

METADATA = ("169.254.169.254", 80)
# How long to wait for the server's answer and close.
TIMEOUT_S = 10.0
RECV_BYTES = 65536
# OpenStack's password is the one path that takes a body.
BODY_PATH = "/openstack/latest/password"
HEAD_PATH = "/latest/meta-data/instance-id"


def build(headers: int, header_bytes: int, body: int) -> bytes:
    if body:
        return (f"POST {BODY_PATH} HTTP/1.1\r\nHost: 169.254.169.254\r\n"
                f"Content-Length: {body}\r\n\r\n").encode() + b"p" * body
    filler = "h" * max(1, header_bytes - len("X-Pad-00000: \r\n"))
    lines = "".join(f"X-Pad-{i:05d}: {filler}\r\n" for i in range(headers))
    return f"GET {HEAD_PATH} HTTP/1.1\r\nHost: 169.254.169.254\r\n{lines}\r\n".encode()


def send_and_read(request: bytes) -> dict:
    sock = socket.create_connection(METADATA, timeout=TIMEOUT_S)
    received: list[bytes] = []
    outcome = {"reset": False}

    def reader() -> None:
        try:
            while chunk := sock.recv(RECV_BYTES):
                received.append(chunk)
        except ConnectionResetError:
            outcome["reset"] = True
        except OSError as exc:
            outcome["read_error"] = str(exc)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    send_error = None
    try:
        sock.sendall(request)
    except OSError as exc:
        send_error = f"{type(exc).__name__} {exc}"
    thread.join(TIMEOUT_S)
    sock.close()
    raw = b"".join(received)
    parts = raw.split(b" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    return {"status": status, "received": len(raw), "reset": outcome["reset"],
            "send_error": send_error, "head": raw[:80].decode(errors="replace")}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--headers", type=int, default=0)
    p.add_argument("--header-bytes", type=int, default=100)
    p.add_argument("--body", type=int, default=0, help="body bytes (a POST)")
    args = p.parse_args(argv)
    request = build(args.headers, args.header_bytes, args.body)
    print(json.dumps({**send_and_read(request), "sent_bytes": len(request)}), flush=True)


if __name__ == "__main__":
    main()
