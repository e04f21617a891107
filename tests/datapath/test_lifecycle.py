"""Daemon lifecycle on a real hypervisor namespace: clean exit, crash and restart, errors."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest

from tests.conftest import FOREIGN_FILTER, write_records
from transparent_md.lab.hypervisor import Hypervisor

pytestmark = pytest.mark.netns

PATH = "/latest/meta-data/instance-id"


@pytest.fixture(scope="module")
def hv(topology, tmp_path_factory):
    hv = Hypervisor(topology)
    hv.bridge("br0")
    guests = [hv.guest(f"g{i}", bridge="br0", port=f"p{i}", addr=f"10.0.0.{10 + i}/24",
                       routes=["169.254.169.254/32 dev eth0"]) for i in range(3)]
    hv.store = str(tmp_path_factory.mktemp("store") / "instances.db")
    write_records(hv.store, [{"instance_id": f"i-{i}", "mac": g.mac} for i, g in enumerate(guests)])
    for port in ("p0", "p1"):
        topology.sh(hv.ns, ["tc", "qdisc", "add", "dev", port, "clsact"], check=True)
        topology.sh(hv.ns, ["tc", "filter", "add", "dev", port, "ingress", *FOREIGN_FILTER],
                    check=True)
    return hv


def responder_netns_of(hv: Hypervisor) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    inode = hv.topo.sh(hv.ns, ["stat", "-L", "-c", "%i", "/proc/self/ns/net"]).stdout.strip()
    return [line.split()[0] for line in out.splitlines() if f"-{inode}-responder" in line]


def test_exit_removes_ours_and_keeps_foreign_filters(hv):
    daemon = hv.start_daemon(["br0"], hv.store)
    for i in range(3):
        assert hv.curl(hv.guests[f"g{i}"].ns, PATH) == (200, f"i-{i}")
        assert len(hv.our_filters(f"p{i}")) == 1
    assert responder_netns_of(hv)
    assert daemon.stop() == 0
    for i in range(3):
        assert hv.our_filters(f"p{i}") == []
    for port in ("p0", "p1"):
        kinds = [f.get("kind") for f in hv.tc_filters(port)]
        assert "u32" in kinds, hv.tc_filters(port)
    links = hv.topo.sh(hv.ns, ["ip", "-br", "link"]).stdout
    assert "tmd-md" not in links
    assert responder_netns_of(hv) == []


def test_sigkill_then_restart_serves_again_with_one_filter_per_port(hv):
    first = hv.start_daemon(["br0"], hv.store)
    assert hv.curl(hv.guests["g0"].ns, PATH) == (200, "i-0")
    first.kill()
    # The crashed daemon left its filters behind; a restart must take them over.
    assert len(hv.our_filters("p0")) == 1
    second = hv.start_daemon(["br0"], hv.store)
    try:
        for i in range(3):
            assert hv.curl(hv.guests[f"g{i}"].ns, PATH) == (200, f"i-{i}")
            assert len(hv.our_filters(f"p{i}")) == 1
        assert len(responder_netns_of(hv)) == 1
    finally:
        assert second.stop() == 0
    assert all(hv.our_filters(f"p{i}") == [] for i in range(3))
    assert "u32" in [f.get("kind") for f in hv.tc_filters("p0")]


def run_cli(hv: Hypervisor, *argv: str, user: str | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "transparent_md", *argv]
    if user:
        cmd = ["setpriv", "--reuid", user, "--regid", user, "--clear-groups", *cmd]
    return hv.topo.sh(hv.ns, cmd, timeout=120)


def test_missing_bridge_is_one_clear_message_and_leaves_nothing(hv):
    res = run_cli(hv, "run", "--bridge", "br-nope", "--store", hv.store)
    assert res.returncode == 2
    assert "bridge 'br-nope' does not exist" in res.stderr
    assert "Traceback" not in res.stderr
    assert "tmd-md" not in hv.topo.sh(hv.ns, ["ip", "-br", "link"]).stdout
    assert responder_netns_of(hv) == []


def test_a_port_is_not_a_bridge(hv):
    res = run_cli(hv, "run", "--bridge", "p0", "--store", hv.store)
    assert res.returncode == 2 and "not a bridge" in res.stderr


def test_not_root_is_one_clear_message(hv, tmp_path):
    store = tmp_path / "s.db"
    res = run_cli(hv, "run", "--bridge", "br0", "--store", str(store), user="65534")
    assert res.returncode == 2, res.stderr
    assert "root" in res.stderr and "Traceback" not in res.stderr
    assert all(hv.our_filters(f"p{i}") == [] for i in range(3))


def test_responder_in_the_current_namespace_leaves_a_foreign_md1_alone(hv):
    # Someone else's device that happens to be called md1 (a veth pair of their own).
    hv.topo.ip(hv.ns, "link add md1 type veth peer name md1-theirs", "link set md1 up")
    try:
        daemon = hv.start_daemon(["br0"], hv.store, ["--responder-netns", "none"])
        try:
            assert responder_netns_of(hv) == []
            addrs = hv.topo.sh(hv.ns, ["ip", "-br", "addr", "show", "dev", "tmd-md1"]).stdout
            assert "169.254.169.254/32" in addrs
            assert hv.curl(hv.guests["g2"].ns, PATH) == (200, "i-2")
            assert "md1@md1-theirs" in hv.topo.sh(hv.ns, ["ip", "-br", "link"]).stdout
        finally:
            assert daemon.stop() == 0
        links = hv.topo.sh(hv.ns, ["ip", "-br", "link"]).stdout
        assert "tmd-md1" not in links
        assert "md1@md1-theirs" in links, links
    finally:
        hv.topo.ip(hv.ns, "link del md1")


def test_metrics_endpoint_counts_the_datapath_and_the_responder(hv):
    daemon = hv.start_daemon(["br0"], hv.store, ["--metrics", "127.0.0.1:9464"])
    try:
        assert hv.curl(hv.guests["g0"].ns, PATH) == (200, "i-0")
        scraped = hv.topo.sh(hv.ns, ["curl", "-sS", "-m", "5", "http://127.0.0.1:9464/metrics"])
        metrics = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                   for line in scraped.stdout.splitlines() if line and not line.startswith("#")}
    finally:
        daemon.stop()
    assert metrics['transparent_md_datapath_packets_total{event="request_redirected"}'] >= 1
    assert metrics['transparent_md_datapath_packets_total{event="reply_redirected"}'] >= 1
    assert metrics['transparent_md_responses_total{code="200"}'] >= 1
    assert metrics["transparent_md_attached_ports"] == 3


def listener_pids(hv: Hypervisor, daemon) -> set[int]:
    """PIDs holding 169.254.169.254:80 open in the daemon's responder namespace.

    The daemon runs under `ip netns exec`, in a mount namespace of its own, and that is
    where its responder namespace is mounted: look from inside it.
    """
    (ns,) = responder_netns_of(hv)
    out = subprocess.run(daemon.in_responder_netns(ns, ["ss", "-Hltnp", "sport = :80"]),
                         capture_output=True, text=True).stdout
    return {int(pid) for pid in re.findall(r"pid=(\d+)", out)}


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_workers_share_the_port_and_the_token_secret(hv):
    daemon = hv.start_daemon(["br0"], hv.store, ["--workers", "3"])
    try:
        pids = listener_pids(hv, daemon)
        assert len(pids) == 3 and daemon.proc.pid in pids
        ns = hv.guests["g1"].ns
        token = hv.topo.sh(ns, ["curl", "-sS", "-m", "5", "-X", "PUT", "-H",
                                "X-aws-ec2-metadata-token-ttl-seconds: 60",
                                "http://169.254.169.254/latest/api/token"]).stdout
        assert token
        # New connection each time: the kernel spreads them over the three processes,
        # and a token issued by one must be accepted by all.
        for _ in range(30):
            assert hv.curl(ns, PATH, extra=["-H", f"X-aws-ec2-metadata-token: {token}"]) == \
                (200, "i-1")
    finally:
        assert daemon.stop() == 0
    assert not [pid for pid in pids if pid_alive(pid)]


def test_workers_die_with_a_killed_daemon(hv):
    daemon = hv.start_daemon(["br0"], hv.store, ["--workers", "2"])
    workers = listener_pids(hv, daemon) - {daemon.proc.pid}
    assert len(workers) == 1
    daemon.kill()
    for _ in range(100):
        if not any(pid_alive(pid) for pid in workers):
            break
        time.sleep(0.05)
    assert not any(pid_alive(pid) for pid in workers)
    # Clean up what the killed daemon left (a restart does exactly this).
    hv.start_daemon(["br0"], hv.store).stop()


def test_metrics_add_up_every_worker(hv):
    daemon = hv.start_daemon(["br0"], hv.store, ["--workers", "3", "--metrics", "127.0.0.1:9465"])
    try:
        for _ in range(30):  # new connections: spread over the three processes
            assert hv.curl(hv.guests["g0"].ns, PATH) == (200, "i-0")
        served = 0.0
        for _ in range(100):  # workers report every second
            scraped = hv.topo.sh(hv.ns, ["curl", "-sS", "-m", "5",
                                         "http://127.0.0.1:9465/metrics"]).stdout
            served = sum(float(line.rsplit(" ", 1)[1]) for line in scraped.splitlines()
                         if line.startswith('transparent_md_responses_total{code="200"}'))
            if served >= 30:
                break
            time.sleep(0.1)
    finally:
        daemon.stop()
    assert served == 30


def test_restart_with_fewer_bridges_removes_our_old_filter(topology, hv):
    hv.bridge("br9")
    hv.guest("g9", bridge="br9", port="p9", addr="10.9.0.5/24")
    first = hv.start_daemon(["br0", "br9"], hv.store)
    assert len(hv.our_filters("p9")) == 1
    first.kill()
    second = hv.start_daemon(["br0"], hv.store)
    try:
        assert hv.our_filters("p9") == []
        assert "removed our filter left on p9" in second.log()
        assert len(hv.our_filters("p0")) == 1
    finally:
        second.stop()
