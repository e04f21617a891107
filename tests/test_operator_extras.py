"""The example Prometheus alert rules and Grafana dashboard (examples/) are valid and use
only metrics the daemon exports: promtool checks the rules, and every metric name the
two use is among those the daemon's collectors produce."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

from prometheus_client import CollectorRegistry, generate_latest

from transparent_md.daemon.health import Health, HealthCollector
from transparent_md.daemon.store_source import FleetCollector
from transparent_md.datapath.metrics import DatapathCollector
from transparent_md.responder.metrics import ResponderStats, StatsCollector

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
RULES = EXAMPLES / "prometheus" / "transparent-md.rules.yml"
DASHBOARD = EXAMPLES / "grafana" / "transparent-md.json"
METRIC = re.compile(r"\btransparent_md_[a-z_]+\b")


def exported_metrics() -> set[str]:
    """Every sample name the daemon's collectors expose. The collectors are the real ones,
    fed stand-ins for the datapath, the fleet follower and the health check (a real
    daemon's /metrics is scraped in tests/daemon/test_degraded.py)."""
    datapath = SimpleNamespace(stats=lambda: {"events": {"request": 1}, "drops": {"syn_rate": 1}},
                               slots_in_use=lambda: 0, attacher=None,
                               guard=SimpleNamespace(restored=0),
                               keeper=SimpleNamespace(stats=SimpleNamespace(
                                   conflicts=0, handovers=0, restored=0,
                                   released_at_start=0)))
    follower = SimpleNamespace(state=SimpleNamespace(connected=True, lag=0, revision=1,
                                                     resyncs=0))

    def check() -> Health:
        return Health()

    check.datapath = datapath  # what HealthCollector reads the guard from
    stats = ResponderStats()
    stats.responses[200] += 1  # a family without samples is not exposed
    registry = CollectorRegistry()
    for collector in (StatsCollector(stats), DatapathCollector(datapath),
                      FleetCollector(follower), HealthCollector(check, lambda: 0)):
        registry.register(collector)
    text = generate_latest(registry).decode()
    return {line.split("{")[0].split()[0] for line in text.splitlines()
            if line and not line.startswith("#")}


def test_promtool_accepts_the_alert_rules():
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: Debian's `prometheus` package (scripts/setup)"
    res = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_rules_cover_health_filters_drops_store_and_5xx():
    text = RULES.read_text()
    for metric in ("transparent_md_health_problems", "transparent_md_health_degraded",
                   "transparent_md_filters_restored_total", "transparent_md_datapath_drops_total",
                   "transparent_md_store_connected", "transparent_md_store_revision_lag",
                   "transparent_md_responses_total"):
        assert metric in text, metric
    assert 'code=~"5.."' in text


def test_rules_and_dashboard_use_only_exported_metrics():
    exported = exported_metrics()
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["query"] for v in dashboard["templating"]["list"]]
    for source, text in (("rules", RULES.read_text()), ("dashboard", "\n".join(exprs))):
        unknown = set(METRIC.findall(text)) - exported
        assert not unknown, f"{source} uses metrics the daemon does not export: {unknown}"


def test_the_dashboard_shows_every_exported_metric():
    dashboard = DASHBOARD.read_text()
    missing = {m for m in exported_metrics() if m not in dashboard}
    assert not missing, f"the dashboard leaves out {missing}"
