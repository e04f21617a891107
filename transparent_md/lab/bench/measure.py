"""Measured load runs: wrk from a set of namespaces while the server's CPU is read.

One round loads every server once per connection mode; several rounds interleave so
that a noisy neighbour slows every server alike, and each row reports the round with
the median CPU per request (one round swings about 10 % on a shared 2-core machine).
"""

from __future__ import annotations

import statistics
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
    # One URL per client when they differ (guests on different subnets); else `url`.
    client_urls: tuple[str, ...] = ()

    def urls(self) -> tuple[str, ...]:
        return self.client_urls or (self.url,) * len(self.clients)


@dataclass(frozen=True)
class Measurement:
    target: Target
    mode: str
    load: wrk.LoadResult
    cpu_s: float
    peak_rss_mib: float
    round: int = 0

    @property
    def cpu_us_per_request(self) -> float:
        return self.cpu_s * 1e6 / self.load.requests if self.load.requests else float("inf")

    def to_json(self) -> dict:
        return {
            "server": self.target.key, "label": self.target.label, "mode": self.mode,
            "round": self.round,
            "requests": self.load.requests, "seconds": round(self.load.seconds, 3),
            "requests_per_s": round(self.load.rps, 1),
            "p50_ms": round(self.load.p50_ms, 3), "p99_ms": round(self.load.p99_ms, 3),
            "errors": self.load.errors, "clients": self.load.clients,
            "cpu_s": round(self.cpu_s, 3),
            "cpu_us_per_request": round(self.cpu_us_per_request, 2),
            "peak_rss_mib": round(self.peak_rss_mib, 1),
        }


def measure(target: Target, mode: str, duration_s: float, hook: Path,
            round_: int = 0) -> Measurement:
    window = CpuWindow(target.pid)
    window.start()
    load = wrk.run_clients(target.clients, target.urls(), duration_s, hook,
                           close=mode == NEW_CONNECTION)
    cpu = window.stop()
    return Measurement(target=target, mode=mode, load=load, cpu_s=cpu,
                       peak_rss_mib=window.peak_rss_mib(), round=round_)


def median_rows(rounds: Sequence[Measurement]) -> list[Measurement]:
    """Per (server, mode), the round whose CPU per request is the median (the lower
    of the two middle ones for an even count), in first-seen order."""
    groups: dict[tuple[str, str], list[Measurement]] = {}
    for m in rounds:
        groups.setdefault((m.target.key, m.mode), []).append(m)
    out = []
    for group in groups.values():
        ranked = sorted(group, key=lambda m: m.cpu_us_per_request)
        out.append(ranked[(len(ranked) - 1) // 2])
    return out


def cpu_ratios(rounds: Sequence[Measurement], ours: str, theirs: str,
               mode: str) -> list[float]:
    """CPU per request of `ours` over `theirs`, one ratio per round that measured both."""
    by = {(m.target.key, m.mode, m.round): m for m in rounds}
    out = []
    for (key, m_mode, r), m in sorted(by.items(), key=lambda kv: kv[0][2]):
        other = by.get((theirs, mode, r))
        if key == ours and m_mode == mode and other and other.cpu_us_per_request:
            out.append(m.cpu_us_per_request / other.cpu_us_per_request)
    return out


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def repeat(namespace: str, times: int) -> Sequence[str]:
    """The same namespace `times` over: as many wrk clients as guests, over loopback."""
    return (namespace,) * times
