"""Admin traffic vs guest replies: a guest crawls while an orchestrator PUTs records.

The guest runs the victim crawl (`lab.attacks.crawl`: ~40 paths a round, each on a
fresh connection, as cloud-init does) in its namespace; meanwhile this process PUTs
COUNT records through the admin API, one after another on one keep-alive connection,
as an orchestrator syncing its inventory would, and keeps PUTting (updates) until the
crawl ends, so every guest request meets admin traffic. The figures: the guest's
p50/p99/max and failures, and the PUTs' own number, rate and latency.

    scripts/api-load [--records 1000]   (root: builds namespaces of its own)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from transparent_md.api.client import ApiClient
from transparent_md.lab.bench.stats import percentile

DEFAULT_RECORDS = 1000
# The crawl's start (interpreter, listings walk) before the first PUT; it takes ~0.2 s.
WARMUP_S = 0.3
# How long the guest crawls; PUTs of 1,000 records take ~3 s here, so they and more
# (updates of the same records) run through the whole crawl.
CRAWL_SECONDS = 6.0
# Pause between the guest's crawl rounds: 40 connections a round and a round every
# ~0.5 s keep the guest under the datapath's per-port SYN limit (100/s by default), so a
# 1 s SYN retransmission measures that defence, not the admin API.
CRAWL_PAUSE_S = 0.5


def orchestrator_record(index: int) -> dict[str, Any]:
    """A realistic record for PUT: MAC, IP, bridge, hostname, a key and some user-data."""
    return {"mac": f"52:54:01:{index >> 16 & 0xFF:02x}:{index >> 8 & 0xFF:02x}:"
                   f"{index & 0xFF:02x}",
            "ip": f"10.{100 + (index >> 16 & 0x3F)}.{index >> 8 & 0xFF}.{index & 0xFF}",
            "bridge": "br0", "hostname": f"vm-{index}",
            "ssh_keys": {"ops": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOpsOpsOpsAA ops@example"},
            "user_data": f"#cloud-config\nhostname: vm-{index}\nruncmd: [echo {index}]\n"}


def put_records(api_path: str, count: int,
                keep_going: Callable[[], bool] = lambda: False) -> dict[str, Any]:
    """PUT records orch-0..orch-(count-1), then again (updates) while `keep_going()`:
    the PUTs' number, time, rate, latency and any non-2xx answers."""
    latencies: list[float] = []
    failed = 0
    started = time.monotonic()
    with ApiClient(api_path) as client:
        while len(latencies) < count or keep_going():
            index = len(latencies) % count
            begin = time.perf_counter()
            reply = client.request("PUT", f"/v1/instances/orch-{index}",
                                   orchestrator_record(index))
            latencies.append((time.perf_counter() - begin) * 1000)
            failed += reply.status not in (200, 201)
    seconds = time.monotonic() - started
    lat = sorted(latencies)
    return {"puts": len(lat), "records": count, "failed": failed,
            "seconds": round(seconds, 2), "per_second": round(len(lat) / seconds, 1),
            "p50_ms": round(percentile(lat, 50), 2), "p99_ms": round(percentile(lat, 99), 2)}


def measure(guest_ns: str, api_path: str, count: int = DEFAULT_RECORDS,
            crawl_seconds: float = CRAWL_SECONDS) -> dict[str, Any]:
    """Crawl from `guest_ns` for `crawl_seconds` while PUTting: at least `count` PUTs,
    and PUTs go on until the crawl ends, so every guest request met admin traffic."""
    crawl = subprocess.Popen(
        ["ip", "netns", "exec", guest_ns, sys.executable, "-m",
         "transparent_md.lab.attacks.crawl", "--seconds", str(crawl_seconds),
         "--pause", str(CRAWL_PAUSE_S)], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(WARMUP_S)
        puts = put_records(api_path, count, keep_going=lambda: crawl.poll() is None)
        out, _ = crawl.communicate(timeout=crawl_seconds + 60)
    finally:
        if crawl.poll() is None:
            crawl.kill()
            crawl.wait()
    return {"orchestrator": puts, "guest": json.loads(out.strip().splitlines()[-1])}


def main(argv: list[str] | None = None) -> None:
    from transparent_md.lab.hypervisor import Hypervisor
    from transparent_md.lab.netns import Topology
    from transparent_md.store import open_store, parse_record

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=DEFAULT_RECORDS)
    p.add_argument("--seconds", type=float, default=CRAWL_SECONDS, help="crawl this long")
    args = p.parse_args(argv)
    import tempfile

    with Topology() as topo, tempfile.TemporaryDirectory() as tmp:
        hv = Hypervisor(topo)
        hv.bridge("br0")
        guest = hv.guest("g0", bridge="br0", port="p0", addr="10.0.0.10/24",
                         routes=["169.254.169.254/32 dev eth0"])
        store, api = f"{tmp}/instances.db", f"{tmp}/api.sock"
        db = open_store(store)
        # A port binding names the link: p0's ifindex in the hypervisor's namespace.
        ifindex = int(topo.sh(hv.ns, ["cat", "/sys/class/net/p0/ifindex"]).stdout)
        db.put_many([parse_record({"instance_id": "i-guest", "mac": guest.mac,
                                   "bridge": "br0", "port": "p0", "port_ifindex": ifindex})])
        db.close()
        daemon = hv.start_daemon(["br0"], store, ["--api", api])
        try:
            print(json.dumps(measure(guest.ns, api, args.records, args.seconds), indent=2))
        finally:
            daemon.stop()


if __name__ == "__main__":
    main()
