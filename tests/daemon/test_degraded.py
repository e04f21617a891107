"""A daemon that works but serves nobody says so: a WARNING at start, a `status` line and
a degraded /healthz (200, `degraded: <reason>`); probes are no guests; `identity` finds
a daemon started under `ip netns exec` wherever `status` does."""

from __future__ import annotations

import json
import re
import signal
import sys
import time

import pytest

from tests.looping_guest import one_guest_hypervisor
from tests.looping_guest import scrape as scrape_from
from transparent_md.lab.hypervisor import Hypervisor

pytestmark = pytest.mark.netns

PATH = "/latest/meta-data/instance-id"
METRICS = "127.0.0.1:9467"
CLI = [sys.executable, "-m", "transparent_md"]


@pytest.fixture(scope="module")
def hv(topology, tmp_path_factory):
    return one_guest_hypervisor(topology, tmp_path_factory)


def scrape(hv: Hypervisor, path: str) -> tuple[int, str]:
    return scrape_from(hv, METRICS, path)


def status(hv: Hypervisor, *extra: str) -> str:
    """`status` once the daemon has written it (it starts within a second or two)."""
    deadline = time.monotonic() + 20
    while True:
        res = hv.topo.sh(hv.ns, [*CLI, "status", *extra])
        if (res.returncode == 0 and "starting" not in res.stdout) or time.monotonic() > deadline:
            return res.stdout + res.stderr
        time.sleep(0.2)


def warnings(log: str) -> list[str]:
    return [line for line in log.splitlines() if "WARNING" in line]


def test_a_store_that_does_not_exist_is_served_empty_with_a_warning(hv, tmp_path):
    typo = tmp_path / "instnaces.db"
    daemon = hv.start_daemon(["br0"], str(typo), ["--metrics", METRICS])
    try:
        health = scrape(hv, "/healthz")
        text = status(hv)
        guest = hv.curl(hv.guests["g0"].ns, PATH)
    finally:
        assert daemon.stop() == 0
    said = [line for line in warnings(daemon.log()) if str(typo) in line]
    assert len(said) == 1 and "serving a new empty store" in said[0], daemon.log()
    assert health == (200, f"degraded: instance store {typo} holds no records: every guest "
                           "gets 404\n"), health
    assert "records: 0" in text and f"DEGRADED: instance store {typo} holds no records" in text
    assert guest[0] == 404
    assert hv.store != str(typo) and len(json.loads(  # the real store lost nothing
        hv.topo.sh(hv.ns, [*CLI, "instance", "list", "--json", "--store", hv.store]).stdout)) == 1


@pytest.mark.parametrize("selection", [["--bridge", "br0", "--port", "nomatch*"],
                                       ["--bridge", "nomatch*"]])
def test_no_attached_port_is_a_warning_a_status_line_and_degraded_health(hv, selection):
    daemon = hv.start_daemon([], hv.store, [*selection, "--metrics", METRICS])
    try:
        health = scrape(hv, "/healthz")
        text = status(hv)
        metrics = scrape(hv, "/metrics")[1]
    finally:
        assert daemon.stop() == 0
    said = [line for line in warnings(daemon.log()) if "no port attached" in line]
    assert len(said) == 1, daemon.log()
    assert health[0] == 200 and health[1].startswith("degraded: no port attached"), health
    assert "ports (0):" in text and "DEGRADED: no port attached" in text, text
    assert "transparent_md_health_degraded 1.0" in metrics
    assert "transparent_md_health_problems 0.0" in metrics


def test_a_reload_that_leaves_no_port_warns_and_degrades(hv, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("bridge: [br0]\n")
    daemon = hv.start_daemon([], hv.store, ["--config", str(config), "--metrics", METRICS])
    try:
        assert scrape(hv, "/healthz") == (200, "ok\n")
        config.write_text("bridge: [br0]\nport: ['nomatch*']\n")
        daemon.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while "no port attached" not in daemon.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        health = scrape(hv, "/healthz")
    finally:
        assert daemon.stop() == 0
    assert len([line for line in warnings(daemon.log()) if "no port attached" in line]) == 1
    assert health[0] == 200 and health[1].startswith("degraded: no port attached"), health


def test_healthz_probes_are_no_guests_in_metrics_or_the_access_log(hv):
    daemon = hv.start_daemon(["br0"], hv.store, ["--metrics", METRICS, "--access-log"])
    try:
        for _ in range(5):
            assert scrape(hv, "/healthz") == (200, "ok\n")
        assert hv.curl(hv.guests["g0"].ns, PATH) == (200, "i-0")
        metrics = scrape(hv, "/metrics")[1]
    finally:
        assert daemon.stop() == 0
    assert "transparent_md_connections_unknown_guest_total 0.0" in metrics, metrics
    responses = dict(re.findall(r'transparent_md_responses_total\{code="(\d+)"\} (\S+)',
                                metrics))
    assert responses.get("404", "0.0") == "0.0" and responses["200"] == "1.0", responses
    assert "transparent_md_health_problems 0.0" in metrics
    assert "transparent_md_records 1.0" in metrics
    access = [line for line in daemon.log().splitlines() if "path=" in line]
    assert len(access) == 1 and "/healthz" not in access[0], access


def test_identity_finds_a_daemon_started_under_ip_netns_exec(hv):
    """The CLI runs under `ip netns exec` too, so its /sys is another than the daemon's:
    it finds the daemon's pins as `status` finds the daemon, with no nsenter."""
    daemon = hv.start_daemon(["br0"], hv.store)
    try:
        assert hv.curl(hv.guests["g0"].ns, PATH) == (200, "i-0")
        listed = hv.topo.sh(hv.ns, [*CLI, "identity", "locks", "--json"])
        released = hv.topo.sh(hv.ns, [*CLI, "identity", "release", "--mac",
                                      hv.guests["g0"].mac])
        after = hv.topo.sh(hv.ns, [*CLI, "identity", "locks", "--json"])
    finally:
        daemon.stop()
    gone = hv.topo.sh(hv.ns, [*CLI, "identity", "locks"])
    assert listed.returncode == 0, listed.stderr
    assert [(lock["mac"], lock["port"]) for lock in json.loads(listed.stdout)] == [
        (hv.guests["g0"].mac, "p0")]
    assert released.returncode == 0 and "released" in released.stdout, released.stderr
    assert json.loads(after.stdout) == []
    assert gone.returncode == 2 and "no transparent-md daemon" in gone.stderr
    assert len(gone.stderr.strip().splitlines()) == 1
