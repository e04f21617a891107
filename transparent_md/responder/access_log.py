"""`run --access-log`: one line per answered request, for operators chasing one guest.

    access port=vnet3 bridge=br0 mac=52:54:00:12:34:56 ip=10.0.0.5 instance=i-0abc
           method=GET path=/latest/meta-data/instance-id status=200 us=41

With `--log-format json` the same fields are JSON keys. Off by default: it costs a
formatted log line per request (the bench measures it; see the README).
"""

from __future__ import annotations

import logging

from transparent_md.identity import Guest

ACCESS_LOGGER = "transparent_md.access"


class AccessLog:
    """Writes one INFO line per request to the `transparent_md.access` logger."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._logger = logger or logging.getLogger(ACCESS_LOGGER)

    def record(self, guest: Guest | None, prepared, parser, url: bytes, status: int,
               micros: int) -> None:
        fields = {
            "port": guest.port if guest else "-", "bridge": guest.bridge if guest else "-",
            "mac": guest.mac if guest else "-", "ip": guest.ip if guest else "-",
            "instance": prepared.instance_id if prepared is not None else "-",
            "method": parser.get_method().decode("ascii", "replace") if parser else "-",
            "path": url.decode("ascii", "backslashreplace"), "status": status, "us": micros,
        }
        self._logger.info("access " + " ".join(f"{k}={v}" for k, v in fields.items()),
                          extra={"fields": fields})
