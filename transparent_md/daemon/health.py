"""What /healthz checks: our filter on every attached port, and a responder that answers.

Problems (a port without our filter, a responder that does not answer) make /healthz
503. A daemon that works but serves nobody is *degraded*: no port attached (a --bridge
or --port that matches nothing) or no record in the store (a new or wrong --store).
Then /healthz is 200 with `degraded: <reason>` lines instead of `ok`, so a load balancer
keeps the host while a human or an alert sees why no guest is answered.

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

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


@dataclass(frozen=True)
class Health:
    """What /healthz answers: problems (503) and degradations (200, named)."""

    problems: list[str] = field(default_factory=list)
    degraded: list[str] = field(default_factory=list)

    def http(self) -> tuple[int, str]:
        """The status code and body of /healthz."""
        if self.problems:
            return 503, "".join(f"{line}\n" for line in self.problems + self.degraded)
        if self.degraded:
            return 200, "".join(f"degraded: {line}\n" for line in self.degraded)
        return 200, "ok\n"


def degradations(attached_ports: int, bridges: list[str], records: int | None,
                 store: str | None) -> list[str]:
    """Why a working daemon answers no guest (see the module doc); the same reasons
    `status` shows and the start or reload warns of."""
    found = []
    if attached_ports == 0:
        found.append(f"no port attached on {', '.join(bridges) or '-'}: no bridge port "
                     "matches --bridge/--port, so no guest is served")
    if records == 0:
        found.append(f"instance store {store} holds no records: every guest gets 404")
    return found


class HealthCheck:
    """Callable for the metrics server: the health right now."""

    def __init__(self, datapath: Datapath,
                 degraded: Callable[[], list[str]] = lambda: []) -> None:
        self.datapath = datapath
        self._degraded = degraded

    def __call__(self) -> Health:
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
        return Health(problems, self._degraded())


class HealthCollector:
    """Prometheus: the health /healthz reports, the filters the guard put back and the
    records served, so alerts need no probe of their own (examples/prometheus/)."""

    def __init__(self, check: HealthCheck, records: Callable[[], int]) -> None:
        self._check = check
        self._records = records

    def collect(self) -> Iterator:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        health = self._check()
        yield GaugeMetricFamily("transparent_md_health_problems",
                                "problems /healthz reports now (503 while above 0): a port "
                                "without our filter, a responder that does not answer",
                                value=len(health.problems))
        yield GaugeMetricFamily("transparent_md_health_degraded",
                                "reasons this working daemon serves nobody now (no port "
                                "attached, no record in the store)",
                                value=len(health.degraded))
        guard = self._check.datapath.guard
        yield CounterMetricFamily("transparent_md_filters_restored",
                                  "our tc filters found removed or replaced and put back",
                                  value=guard.restored if guard else 0)
        yield GaugeMetricFamily("transparent_md_records", "instance records in the store "
                                "this daemon serves from", value=self._records())
