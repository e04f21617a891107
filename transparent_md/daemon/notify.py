"""The few lines of systemd's notify protocol a `Type=notify` service needs.

systemd passes `NOTIFY_SOCKET` (a datagram socket path, `@` for the abstract namespace)
and, with `WatchdogSec=`, `WATCHDOG_USEC`. We send `READY=1` once every port carries
our filter, `WATCHDOG=1` from the serving loop, `RELOADING=1`/`READY=1` around a
reload, and `STOPPING=1` when a stop begins. Without `NOTIFY_SOCKET` every call is a
no-op, so the daemon behaves the same outside systemd.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)

# Ping the watchdog this many times per WatchdogSec, as sd_watchdog_enabled(3) advises
# (at least twice), so one slow loop iteration never trips it.
WATCHDOG_PINGS_PER_PERIOD = 3


class Notifier:
    """Sends state lines to systemd's notify socket, if there is one."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        watchdog_usec = env.get("WATCHDOG_USEC", "")
        self.watchdog_interval_s = (
            int(watchdog_usec) / 1e6 / WATCHDOG_PINGS_PER_PERIOD
            if watchdog_usec.isdigit() and int(watchdog_usec) > 0 else None
        )

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def send(self, *lines: str) -> None:
        if not self._address:
            return
        payload = "\n".join(lines).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(payload, self._address)
        except OSError as exc:  # systemd gone or socket unwritable: never fatal
            log.warning("could not notify systemd (%s): %s", lines[0], exc)

    def ready(self, status: str = "") -> None:
        self.send("READY=1", f"STATUS={status}" if status else "STATUS=serving",
                  f"MAINPID={os.getpid()}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def reloading(self) -> None:
        self.send("RELOADING=1")

    def stopping(self) -> None:
        self.send("STOPPING=1")
