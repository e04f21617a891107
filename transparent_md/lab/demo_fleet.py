"""The fleet variant of the demo (`demo --fleet`): records in an etcd of the demo's own.

An etcd member runs in a namespace beside the hypervisor, joined to it by
`lab.etcd.fleet_network`; the records go in with `transparent-md instance import
--store etcd://...` run in the hypervisor namespace, as an operator would; the daemon
is started with that `--store` and a `--cache` in the demo's temporary directory (never
the system's state directory). The etcd process belongs to the demo's Topology, so it is
stopped with the namespaces, also on a failure or Ctrl-C.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from transparent_md.errors import UserError
from transparent_md.lab.etcd import ETCD_BINARY, FLEET_ETCD_IPS, EtcdCluster, fleet_network
from transparent_md.lab.hypervisor import Hypervisor
from transparent_md.lab.netns import Topology
from transparent_md.store.record import Instance

# The key prefix of the demo's records (PREFIX/instances/<id>).
DEMO_PREFIX = "/demo"
# One member shows the whole path; clusters and member failures are the tests' job.
DEMO_MEMBERS = 1


@dataclass(frozen=True)
class DemoFleet:
    etcd: EtcdCluster
    url: str          # the --store URL the daemon and the CLI use
    cache_path: str   # the daemon's local cache, inside the demo's temporary directory

    def daemon_args(self) -> list[str]:
        return ["--cache", self.cache_path]


def require_fleet_tools() -> None:
    """One line naming what is missing, before anything is built."""
    if shutil.which(ETCD_BINARY) is None:
        raise UserError("demo --fleet needs the etcd server (Debian's etcd-server package; "
                        "scripts/setup installs it)")
    if importlib.util.find_spec("etcd3gw") is None:
        raise UserError("demo --fleet needs the etcd extra: pip install 'transparent-md[etcd]'")


def start_fleet(topo: Topology, hv: Hypervisor, records: Sequence[Instance],
                workdir: Path) -> DemoFleet:
    """Start the demo's etcd, wire it to `hv` and import `records` into it."""
    etcd_ns = topo.add_ns("etcd")
    ips = FLEET_ETCD_IPS[:DEMO_MEMBERS]
    fleet_network(topo, etcd_ns, [hv.ns], ips)
    etcd = EtcdCluster(topo, etcd_ns, ips, workdir / "etcd").start()
    url = etcd.url(DEMO_PREFIX)
    import_records(topo, hv.ns, url, records)
    return DemoFleet(etcd, url, str(workdir / "cache.db"))


def import_records(topo: Topology, ns: str, url: str, records: Sequence[Instance]) -> None:
    """`transparent-md instance import - --store URL` in `ns`, the records as JSON."""
    payload = json.dumps([record.to_mapping() for record in records])
    res = topo.sh(ns, [sys.executable, "-m", "transparent_md", "instance", "import", "-",
                       "--store", url], input=payload)
    if res.returncode != 0:
        raise UserError(f"importing the demo's records into {url} failed: "
                        f"{res.stderr.strip() or res.stdout.strip()}")
