"""The daemon's HTTP side door: Prometheus metrics and a health check on one listener.

    /metrics  every collector (responder, datapath) in Prometheus' text format
    /healthz  200 "ok" when every attached port carries our filter and the responder
              answers a probe; 200 with "degraded: <reason>" lines when it works but
              serves nobody (no port, no record); else 503 with the reasons
              (see daemon.health)

It runs in a background thread in the daemon's namespace, never on the guests' path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from transparent_md.daemon.health import Health

from transparent_md.errors import UserError
from transparent_md.process import start_thread

log = logging.getLogger(__name__)

HealthCheck = Callable[[], "Health"]
"""Returns the health found now (daemon.health.Health)."""


def start_metrics(address: tuple[str, int], collectors: list[Collector],
                  health: HealthCheck) -> ThreadingHTTPServer:
    """Serve /metrics and /healthz on http://HOST:PORT from a background thread."""
    registry = CollectorRegistry()
    for collector in collectors:
        registry.register(collector)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                code, body = health().http()
                self._send(code, body.encode(), "text/plain; charset=utf-8")
            else:
                self._send(404, b"try /metrics or /healthz\n", "text/plain; charset=utf-8")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass  # scrapes every few seconds would drown the log

    host, port = address
    try:
        server = ThreadingHTTPServer((host, port), Handler)
    except OSError as exc:
        raise UserError(f"--metrics {host}:{port}: {exc.strerror}") from exc
    server.daemon_threads = True
    start_thread("metrics", server.serve_forever)
    log.info("metrics on http://%s:%d/metrics, health on /healthz", host, port)
    return server
