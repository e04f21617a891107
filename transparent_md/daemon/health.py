"""What /healthz checks: our filter on every attached port, and a responder that answers.

The probe is a real HTTP request to 169.254.169.254:80 from inside the responder's
namespace: it fails if the event loop is stuck, the socket is gone or the process is
out of file descriptors, which a "the process exists" check would never see.

The filters are checked live, port by port, on hosts of up to `LIVE_CHECK_PORTS`
ports. Above that a scrape reports what the filter guard found (the kernel's tc events
and its paced sweep): a live check of 1,000 ports is a third of a second of Python
holding the GIL that the serving loop in the same process waits for.
"""

from __future__ import annotations

import socket

from pyroute2 import IPRoute

from transparent_md.datapath.datapath import Datapath
from transparent_md.datapath.responder_side import METADATA_IP, METADATA_PORT, entered_netns

# A healthy responder answers in microseconds; a second means it is stuck or starved.
PROBE_TIMEOUT_S = 1.0
PROBE_REQUEST = b"GET /healthz HTTP/1.0\r\n\r\n"
# Ports up to which /healthz looks at every filter itself (see above).
LIVE_CHECK_PORTS = 64


def probe_responder(netns_name: str | None, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when the responder answered an HTTP status line; else what went wrong."""
    try:
        with entered_netns(netns_name):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with sock:
            sock.settimeout(timeout)
            sock.connect((METADATA_IP, METADATA_PORT))
            sock.sendall(PROBE_REQUEST)
            head = sock.recv(16)
    except OSError as exc:
        return f"responder probe failed: {exc}"
    if not head.startswith(b"HTTP/1."):
        return f"responder probe got {head!r} instead of an HTTP status line"
    return None


class HealthCheck:
    """Callable for the metrics server: the list of problems right now."""

    def __init__(self, datapath: Datapath) -> None:
        self.datapath = datapath

    def __call__(self) -> list[str]:
        problems = []
        guard = self.datapath.guard
        if guard is None:
            problems.append("datapath not running")
        else:
            if len(self.datapath.attacher.attached) <= LIVE_CHECK_PORTS:
                with IPRoute() as ipr:
                    missing = guard.missing(ipr)
            else:
                missing = sorted(guard.missing_now)
            what = ("our nftables table is missing" if self.datapath.kind == "raw"
                    else "our tc filter is missing")
            problems += [f"port {name}: {what}" for name in missing]
        failure = probe_responder(self.datapath.names.responder_netns)
        if failure:
            problems.append(failure)
        return problems
