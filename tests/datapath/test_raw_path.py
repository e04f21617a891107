"""What only the raw-socket datapath has: its nftables tables (taken over after
`kill -9`, put back when deleted, gone after a stop), and `--datapath auto` choosing it
when no tc program can be had (bcc hidden from the daemon), saying why.

What both datapaths share is tested on both (the `datapath` fixture): test_tc_path,
hostile/test_forgery, hostile/test_flood, test_port_selection.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.bcc_hidden import env_without_bcc
from tests.conftest import write_records
from transparent_md.lab.hypervisor import Hypervisor, raw_table_name

pytestmark = pytest.mark.netns

PATH = "/latest/meta-data/instance-id"
GUARD_RESTORES_WITHIN_S = 10.0


@pytest.fixture(scope="module")
def hv(topology, tmp_path_factory):
    hv = Hypervisor(topology)
    hv.bridge("br0")
    guests = [hv.guest(f"g{i}", bridge="br0", port=f"p{i}", addr=f"10.0.0.{10 + i}/24",
                       routes=["169.254.169.254/32 dev eth0"]) for i in range(2)]
    hv.store = str(tmp_path_factory.mktemp("store") / "instances.db")
    write_records(hv.store, [{"instance_id": f"i-{i}", "mac": g.mac}
                             for i, g in enumerate(guests)])
    return hv


def our_tables(hv: Hypervisor) -> list[tuple[str, str]]:
    """(family, name) of the nftables tables named after the daemon, in its namespace."""
    res = hv.topo.sh(hv.ns, ["nft", "-j", "list", "tables"], check=True)
    return sorted((t["table"]["family"], t["table"]["name"])
                  for t in json.loads(res.stdout)["nftables"] if "table" in t
                  and t["table"]["name"] == raw_table_name())


def status(hv: Hypervisor) -> dict:
    res = hv.topo.sh(hv.ns, [sys.executable, "-m", "transparent_md", "status", "--json"])
    return json.loads(res.stdout) if res.returncode == 0 else {}


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_sigkill_then_restart_takes_the_table_over(hv):
    first = hv.start_daemon(["br0"], hv.store, datapath="raw")
    assert hv.curl(hv.guests["g0"].ns, PATH) == (200, "i-0")
    assert our_tables(hv) == [("bridge", raw_table_name()), ("netdev", raw_table_name())]
    first.kill()
    assert our_tables(hv), "a killed daemon cannot remove its table"
    second = hv.start_daemon(["br0"], hv.store, datapath="raw")
    try:
        assert len(our_tables(hv)) == 2  # replaced, not doubled
        assert hv.raw_ports() == {"p0", "p1"}
        for i in range(2):
            assert hv.curl(hv.guests[f"g{i}"].ns, PATH) == (200, f"i-{i}")
        # The MAC locks live in the raw datapath's tables: the CLI reads them there.
        listed = hv.topo.sh(hv.ns, [sys.executable, "-m", "transparent_md", "identity",
                                    "locks", "--json"], check=True)
        held = {(lock["mac"], lock["port"]) for lock in json.loads(listed.stdout)}
        assert {(hv.guests[f"g{i}"].mac, f"p{i}") for i in range(2)} <= held, held
    finally:
        assert second.stop() == 0
    assert our_tables(hv) == []


def test_a_deleted_table_is_put_back_and_counted(hv):
    daemon = hv.start_daemon(["br0"], hv.store, datapath="raw")
    try:
        hv.topo.sh(hv.ns, ["nft", "delete", "table", "bridge", raw_table_name()], check=True)
        wait_for(lambda: ("bridge", raw_table_name()) in our_tables(hv)
                 and hv.raw_ports() == {"p0", "p1"}, GUARD_RESTORES_WITHIN_S,
                 f"table not put back:\n{daemon.log()}")
        assert "putting it back" in daemon.log()
        assert hv.curl(hv.guests["g1"].ns, PATH) == (200, "i-1")
        wait_for(lambda: status(hv).get("filters_restored", 0) >= 1, GUARD_RESTORES_WITHIN_S,
                 "status does not count the restore")
    finally:
        assert daemon.stop() == 0


def test_auto_without_bcc_runs_raw_and_says_why(hv, tmp_path):
    daemon = hv.start_daemon(["br0"], hv.store, env=env_without_bcc(tmp_path),
                             datapath="auto")
    try:
        log = daemon.log()
        assert "datapath raw (auto: no tc program here" in log, log
        assert "bcc" in log.split("datapath raw (auto:")[1].splitlines()[0], log
        assert hv.curl(hv.guests["g0"].ns, PATH) == (200, "i-0")
        shown = status(hv)
        assert shown["datapath_kind"] == "raw" and "bcc" in shown["datapath_reason"], shown
        text = hv.topo.sh(hv.ns, [sys.executable, "-m", "transparent_md", "status"]).stdout
        assert "datapath: raw (auto: no tc program here" in text, text
    finally:
        assert daemon.stop() == 0
    assert our_tables(hv) == []


def test_auto_with_bcc_runs_tc(hv):
    daemon = hv.start_daemon(["br0"], hv.store, datapath="auto")
    try:
        assert "datapath tc (auto: tc programs compiled and attached)" in daemon.log()
        assert hv.our_filters("p0") and our_tables(hv) == []
    finally:
        assert daemon.stop() == 0


def test_guests_frames_to_the_metadata_address_reach_no_neighbour(hv):
    """The bridge gets its own copy of what the port's socket took: the table drops it,
    so a neighbour capturing on its port sees none of another guest's requests (nor its
    ARP for 169.254.169.254)."""
    daemon = hv.start_daemon(["br0"], hv.store, datapath="raw")
    asker, watcher = hv.guests["g0"], hv.guests["g1"]
    capture = hv.topo.spawn(watcher.ns, ["tcpdump", "-i", "eth0", "--immediate-mode", "-n",
                                         "-l", "host 169.254.169.254 or udp port 9999"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    try:
        for line in capture.stderr:
            if "listening on" in line:
                break
        hv.topo.ip(asker.ns, "neigh flush dev eth0")
        assert hv.curl(asker.ns, PATH) == (200, "i-0")
        # A control datagram, sent last: once the capture shows it, what was sent
        # before it would have shown too.
        send = ("import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                "s.sendto(b'x', (sys.argv[1], 9999))")
        hv.topo.sh(asker.ns, [sys.executable, "-c", send, watcher.ip], check=True)
        deadline = time.monotonic() + 10
        for line in capture.stdout:
            seen.append(line)
            if f"> {watcher.ip}.9999" in line or time.monotonic() > deadline:
                break
    finally:
        capture.terminate()
        capture.wait(timeout=10)
        assert daemon.stop() == 0
    assert any(f"> {watcher.ip}.9999" in line for line in seen), seen
    assert [line for line in seen if "169.254.169.254" in line] == [], seen


def _packets(ns_rules: dict, chain: str, match: str) -> int:
    """Packets counted by the rule of `chain` whose text has `match` (nft -j output)."""
    for item in ns_rules["nftables"]:
        rule = item.get("rule")
        if rule and rule["chain"] == chain and match in json.dumps(rule["expr"]):
            return next(e["counter"]["packets"] for e in rule["expr"] if "counter" in e)
    raise AssertionError(f"no rule in chain {chain} matching {match}")


def test_each_frame_the_socket_took_is_dropped_once_not_per_port(hv):
    """The bridge drops a frame to 169.254.169.254 as it enters, once: not after
    flooding it (the MAC it is sent to is on no port) to every port and judging each
    copy, a cost that grew with the bridge and swamped a boot storm."""
    if "g2" not in hv.guests:  # a third port: a flooded frame would be judged twice
        hv.guest("g2", bridge="br0", port="p2", addr="10.0.0.12/24")
    daemon = hv.start_daemon(["br0"], hv.store, datapath="raw")
    asker = hv.guests["g0"]
    hv.topo.sh(asker.ns, ["nft", "add table inet sent\n"
                          "add chain inet sent out { type filter hook output priority 0; }\n"
                          "add rule inet sent out ip daddr 169.254.169.254 tcp dport 80 "
                          "counter"], check=True)
    try:
        for _ in range(3):
            assert hv.curl(asker.ns, PATH) == (200, "i-0")
        sent = json.loads(hv.topo.sh(asker.ns, ["nft", "-j", "list", "table", "inet", "sent"],
                                     check=True).stdout)
        guard = json.loads(hv.topo.sh(hv.ns, ["nft", "-j", "list", "table", "bridge",
                                              raw_table_name()], check=True).stdout)
        frames = _packets(sent, "out", "169.254.169.254")
        assert frames > 0
        assert _packets(guard, "guard", "169.254.169.254") == frames
    finally:
        hv.topo.sh(asker.ns, ["nft", "delete table inet sent"])
        assert daemon.stop() == 0
