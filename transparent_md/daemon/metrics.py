"""The daemon's Prometheus endpoint: responder and datapath collectors on one registry."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.registry import Collector

from transparent_md.errors import UserError

log = logging.getLogger(__name__)


def start_metrics(address: tuple[str, int], collectors: list[Collector]) -> None:
    """Serve `collectors` on http://HOST:PORT/metrics from a background thread."""
    registry = CollectorRegistry()
    for collector in collectors:
        registry.register(collector)
    host, port = address
    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise UserError(f"--metrics {host}:{port}: {exc.strerror}") from exc
    log.info("metrics on http://%s:%d/metrics", host, port)
