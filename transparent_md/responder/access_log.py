"""`run --access-log`: one line per answered request, for operators chasing one guest.

    2026-11-29T16:40:01.123Z access port=vnet3 bridge=br0 mac=52:54:00:12:34:56
        ip=10.0.0.5 instance=i-0abc method=GET path=/latest/meta-data/instance-id
        status=200 us=41

With `--log-format json` each line is a JSON object with the same fields. Lines are
formatted without the logging module and written to stderr in batches (at most every
0.2 s, or at 64 KiB): a `logging` call and a write(2) per request cost several times
the request itself (scripts/bench-access-log measures what is left).
"""

from __future__ import annotations

import asyncio
import json
import os
import time

from transparent_md.identity import Guest

# Lines are written out this often at the latest, or when this many bytes wait.
FLUSH_INTERVAL_S = 0.2
FLUSH_BYTES = 64 * 1024
STDERR = 2


class AccessLog:
    """Formats one line per request and writes them to `fd` in batches."""

    def __init__(self, json_lines: bool = False, fd: int = STDERR) -> None:
        self._json = json_lines
        self._fd = fd
        self._lines: list[str] = []
        self._size = 0
        self._flush_handle: asyncio.TimerHandle | None = None
        self._second = -1
        self._second_text = ""

    def record(self, guest: Guest | None, prepared, parser, url: bytes, status: int,
               micros: int) -> None:
        now = time.time()
        second = int(now)
        if second != self._second:  # one strftime a second, not one a line
            self._second = second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        stamp = f"{self._second_text}.{int((now - second) * 1000):03d}Z"
        method = parser.get_method().decode("ascii", "replace") if parser else "-"
        path = url.decode("ascii", "backslashreplace")
        instance = prepared.instance_id if prepared is not None else "-"
        if guest is None:
            port = bridge = mac = ip = "-"
        else:
            port, bridge, mac, ip = guest.port, guest.bridge, guest.mac, guest.ip
        if self._json:
            line = json.dumps({
                "time": stamp, "level": "info", "logger": "transparent_md.access",
                "message": "access", "port": port, "bridge": bridge, "mac": mac, "ip": ip,
                "instance": instance, "method": method, "path": path, "status": status,
                "us": micros}) + "\n"
        else:
            line = (f"{stamp} access port={port} bridge={bridge} mac={mac} ip={ip} "
                    f"instance={instance} method={method} path={path} status={status} "
                    f"us={micros}\n")
        self._lines.append(line)
        self._size += len(line)
        if self._size >= FLUSH_BYTES:
            self.flush()
        elif self._flush_handle is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # not in a loop (a test driving the protocol): at once
                self.flush()
            else:
                self._flush_handle = loop.call_later(FLUSH_INTERVAL_S, self.flush)

    def flush(self) -> None:
        """Write every waiting line now (also called when the responder closes)."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if not self._lines:
            return
        data = "".join(self._lines).encode("utf-8", "backslashreplace")
        self._lines.clear()
        self._size = 0
        try:
            while data:
                written = os.write(self._fd, data)
                data = data[written:]
        except BlockingIOError:
            pass  # a non-blocking stderr whose reader stalls: lines are lost, guests not
