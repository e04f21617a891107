"""A small fleet in namespaces: etcd member(s) in one namespace, hypervisor namespaces
joined to it (lab.etcd.fleet_network), each with a bridge, a guest and a daemon that
serves from its own cache of the fleet's records."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from transparent_md.lab.etcd import FLEET_ETCD_IPS, EtcdCluster, fleet_network
from transparent_md.lab.hypervisor import DaemonProcess, Hypervisor
from transparent_md.lab.netns import Topology

GUEST_ROUTES = ["169.254.169.254/32 dev eth0"]
# How often a test looks again while waiting for something to propagate.
POLL_S = 0.02
METRICS = "127.0.0.1:9466"


class Fleet:
    def __init__(self, topo: Topology, tmp: Path, *, members: int = 1,
                 hypervisors: int = 2) -> None:
        self.topo = topo
        self.tmp = tmp
        etcd_ns = topo.add_ns("etcd")
        self.hvs = [Hypervisor(topo, f"hv{i + 1}") for i in range(hypervisors)]
        fleet_network(topo, etcd_ns, [hv.ns for hv in self.hvs], FLEET_ETCD_IPS[:members])
        self.etcd = EtcdCluster(topo, etcd_ns, FLEET_ETCD_IPS[:members], tmp / "etcd").start()
        self.url = self.etcd.url("/fleet")
        self.daemons: dict[int, DaemonProcess] = {}
        for index, hv in enumerate(self.hvs):
            hv.bridge("br0")
            hv.guest(f"g{index + 1}", bridge="br0", port="p0", addr=f"10.0.0.{10 + index}/24",
                     routes=GUEST_ROUTES, mac=f"02:00:00:00:0{index + 1}:01")

    def cache(self, index: int) -> str:
        return str(self.tmp / f"cache-hv{index + 1}.db")

    def start_daemon(self, index: int) -> DaemonProcess:
        daemon = self.hvs[index].start_daemon(
            ["br0"], self.url, extra=["--cache", self.cache(index), "--metrics", METRICS,
                            "--api", "none"])
        self.daemons[index] = daemon
        return daemon

    def stop(self) -> None:
        for daemon in self.daemons.values():
            daemon.stop()
        self.etcd.stop()

    def cli(self, *args: str, hv: int = 0) -> subprocess.CompletedProcess:
        """`transparent-md ARGS --store URL` run on a hypervisor."""
        return self.topo.sh(self.hvs[hv].ns, [sys.executable, "-m", "transparent_md", *args,
                                              "--store", self.url])

    def add(self, instance_id: str, *flags: str, hv: int = 0) -> None:
        res = self.cli("instance", "add", instance_id, *flags, hv=hv)
        assert res.returncode == 0, res.stderr

    def cached_ids(self, index: int) -> set[str]:
        """The ids in a daemon's cache file, read as the responders read it."""
        with sqlite3.connect(f"file:{self.cache(index)}?mode=ro", uri=True) as db:
            return {row[0] for row in db.execute("SELECT instance_id FROM instances")}

    def cached_record(self, index: int, instance_id: str) -> str | None:
        with sqlite3.connect(f"file:{self.cache(index)}?mode=ro", uri=True) as db:
            row = db.execute("SELECT record FROM instances WHERE instance_id = ?",
                             (instance_id,)).fetchone()
        return row[0] if row else None

    def wait_cached(self, instance_id: str, indexes: list[int], timeout: float) -> float:
        """Seconds until every daemon's cache holds `instance_id` (raises after timeout)."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if all(instance_id in self.cached_ids(i) for i in indexes):
                return time.monotonic() - started
            time.sleep(POLL_S)
        raise AssertionError(f"{instance_id} not in every cache after {timeout} s")

    def served(self, index: int, timeout: float = 3.0) -> tuple[int, str]:
        hv = self.hvs[index]
        guest = hv.guests[f"g{index + 1}"]
        return hv.curl(guest.ns, "/latest/meta-data/instance-id", timeout=timeout)

    def metrics(self, index: int) -> dict[str, float]:
        res = self.topo.sh(self.hvs[index].ns, ["curl", "-sS", "-m", "5",
                                                 f"http://{METRICS}/metrics"])
        values = {}
        for line in res.stdout.splitlines():
            if line.startswith("transparent_md_store_"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values
