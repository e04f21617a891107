"""One measured load run: wrk from a set of namespaces while the server's CPU is read."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from transparent_md.lab.bench import wrk
from transparent_md.lab.bench.procstat import CpuWindow

KEEP_ALIVE = "keep-alive"
NEW_CONNECTION = "new connection"
MODES = (KEEP_ALIVE, NEW_CONNECTION)


@dataclass(frozen=True)
class Target:
    """Where a load goes: the server process to watch and the namespaces to load from."""

    key: str       # short id used in JSON and the chart
    label: str     # what the table calls it
    pid: int
    url: str
    clients: tuple[str, ...]  # one wrk per entry (a namespace may repeat)
    ours: bool     # transparent-md's responder (the CPU targets apply)


@dataclass(frozen=True)
class Measurement:
    target: Target
    mode: str
    load: wrk.LoadResult
    cpu_s: float
    peak_rss_mib: float

    @property
    def cpu_us_per_request(self) -> float:
        return self.cpu_s * 1e6 / self.load.requests if self.load.requests else float("inf")

    def to_json(self) -> dict:
        return {
            "server": self.target.key, "label": self.target.label, "mode": self.mode,
            "requests": self.load.requests, "seconds": round(self.load.seconds, 3),
            "requests_per_s": round(self.load.rps, 1),
            "p50_ms": round(self.load.p50_ms, 3), "p99_ms": round(self.load.p99_ms, 3),
            "errors": self.load.errors, "clients": self.load.clients,
            "cpu_s": round(self.cpu_s, 3),
            "cpu_us_per_request": round(self.cpu_us_per_request, 2),
            "peak_rss_mib": round(self.peak_rss_mib, 1),
        }


def measure(target: Target, mode: str, duration_s: float, hook: Path) -> Measurement:
    window = CpuWindow(target.pid)
    window.start()
    load = wrk.run_clients(target.clients, target.url, duration_s, hook,
                           close=mode == NEW_CONNECTION)
    cpu = window.stop()
    return Measurement(target=target, mode=mode, load=load, cpu_s=cpu,
                       peak_rss_mib=window.peak_rss_mib())


def repeat(namespace: str, times: int) -> Sequence[str]:
    """The same namespace `times` over: as many wrk clients as guests, over loopback."""
    return (namespace,) * times
