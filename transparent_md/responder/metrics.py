"""Request counters: plain integers on the hot path, Prometheus reads them on scrape.

A prometheus_client Counter takes a lock per increment; a dict increment does not,
and the responder is single-threaded, so counting costs next to nothing per request.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from transparent_md.responder.admission import REFUSAL_REASONS

_SCALARS = ("connections_opened", "connections_unknown_guest", "connections_idle_closed",
            "open_connections", "requests_throttled", "forgery_refused", "header_timeouts",
            "keepalive_limit_closed", "accept_paused", "accept_restarted",
            "memory_reclaims", "send_timeouts")
# Defences' counters: (attribute, metric name, help).
_DEFENCE_COUNTERS = (
    ("requests_throttled", "transparent_md_requests_throttled",
     "requests answered 429: over their identity's request rate"),
    ("forgery_refused", "transparent_md_forgery_refused",
     "requests answered 404 because their MAC is locked to another port"),
    ("header_timeouts", "transparent_md_header_timeouts",
     "connections closed (408) because a request head did not complete in time"),
    ("send_timeouts", "transparent_md_send_timeouts",
     "connections reset because their replies stayed unsent for the send timeout"),
    ("keepalive_limit_closed", "transparent_md_keepalive_limit_closed",
     "keep-alive connections ended after their request count or lifetime limit"),
    ("accept_paused", "transparent_md_accept_paused",
     "times accepting paused at the file descriptor budget"),
    ("accept_restarted", "transparent_md_accept_restarted",
     "times accepting was restarted: connections waited in the backlog, nobody took them"),
    ("memory_reclaims", "transparent_md_memory_reclaims",
     "times memory was returned to the system after a connection flood"),
)


class ResponderStats:
    """Counts kept by the protocol; read by `StatsCollector` or tests."""

    def __init__(self) -> None:
        self.responses: defaultdict[int, int] = defaultdict(int)
        self.connections_opened = 0
        self.connections_unknown_guest = 0
        self.connections_idle_closed = 0
        self.open_connections = 0
        # Connections closed at once on arrival, by cap: identity, port, unknown.
        self.connections_refused: defaultdict[str, int] = defaultdict(int)
        self.requests_throttled = 0
        self.forgery_refused = 0
        self.header_timeouts = 0
        self.send_timeouts = 0
        self.keepalive_limit_closed = 0
        self.accept_paused = 0
        self.accept_restarted = 0
        self.memory_reclaims = 0

    def as_dict(self) -> dict:
        """Plain data, for handing the counts of a worker process to the daemon."""
        return {"responses": {str(k): v for k, v in self.responses.items()},
                "connections_refused": dict(self.connections_refused),
                **{name: getattr(self, name) for name in _SCALARS}}

    def add(self, counts: dict) -> None:
        """Add another process's `as_dict()` to these counts."""
        for code, count in counts.get("responses", {}).items():
            self.responses[int(code)] += count
        for reason, count in counts.get("connections_refused", {}).items():
            self.connections_refused[reason] += count
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
                                  "connections from a shadow address that names no guest "
                                  "(a free slot or a port no longer ours); a guest without "
                                  "a record is logged, not counted here",
                                  value=s.connections_unknown_guest)
        yield CounterMetricFamily("transparent_md_connections_idle_closed",
                                  "connections closed for idling", value=s.connections_idle_closed)
        yield GaugeMetricFamily("transparent_md_open_connections", "connections open now",
                                value=s.open_connections)
        refused = CounterMetricFamily(
            "transparent_md_connections_refused",
            "connections closed on arrival: their identity, port or the unknown guests "
            "were at their connection cap", labels=["reason"])
        for reason in REFUSAL_REASONS:
            refused.add_metric([reason], s.connections_refused.get(reason, 0))
        yield refused
        for attribute, name, documentation in _DEFENCE_COUNTERS:
            yield CounterMetricFamily(name, documentation, value=getattr(s, attribute))
