"""Request counters: plain integers on the hot path, Prometheus reads them on scrape.

A prometheus_client Counter takes a lock per increment; a dict increment does not,
and the responder is single-threaded, so counting costs ~50 ns per request.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

_SCALARS = ("connections_opened", "connections_unknown_guest", "connections_idle_closed",
            "open_connections")


class ResponderStats:
    """Counts kept by the protocol; read by `StatsCollector` or tests."""

    def __init__(self) -> None:
        self.responses: defaultdict[int, int] = defaultdict(int)
        self.connections_opened = 0
        self.connections_unknown_guest = 0
        self.connections_idle_closed = 0
        self.open_connections = 0

    def as_dict(self) -> dict:
        """Plain data, for handing the counts of a worker process to the daemon."""
        return {"responses": {str(k): v for k, v in self.responses.items()},
                **{name: getattr(self, name) for name in _SCALARS}}

    def add(self, counts: dict) -> None:
        """Add another process's `as_dict()` to these counts."""
        for code, count in counts.get("responses", {}).items():
            self.responses[int(code)] += count
        for name in _SCALARS:
            setattr(self, name, getattr(self, name) + counts.get(name, 0))


class StatsCollector(Collector):
    """Expose `ResponderStats` as transparent_md_* metrics; register it in a registry.

    `others` returns the counts of sibling processes (`run --workers`) to add in.
    """

    def __init__(self, stats: ResponderStats,
                 others: Callable[[], Iterable[dict]] | None = None) -> None:
        self._stats = stats
        self._others = others

    def collect(self) -> Iterator:
        s = self._stats
        if self._others is not None:
            s = ResponderStats()
            s.add(self._stats.as_dict())
            for counts in self._others():
                s.add(counts)
        responses = CounterMetricFamily("transparent_md_responses",
                                        "HTTP responses sent, by status code", labels=["code"])
        for code, count in sorted(s.responses.items()):
            responses.add_metric([str(code)], count)
        yield responses
        yield CounterMetricFamily("transparent_md_connections",
                                  "TCP connections accepted", value=s.connections_opened)
        yield CounterMetricFamily("transparent_md_connections_unknown_guest",
                                  "connections from guests that match no record",
                                  value=s.connections_unknown_guest)
        yield CounterMetricFamily("transparent_md_connections_idle_closed",
                                  "connections closed for idling", value=s.connections_idle_closed)
        yield GaugeMetricFamily("transparent_md_open_connections", "connections open now",
                                value=s.open_connections)
