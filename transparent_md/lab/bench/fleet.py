"""Fleet store figures (issue 13, acceptance 5): 10,000 records in etcd; a daemon's cold
start (empty cache) and warm start (cache kept), watch lag under a steady write rate,
and the daemon's RSS. Then a fleet under writes (issue 26, `under_writes`): a 3-member
etcd and three daemons, guests asking on all three, steady and during single-record
PATCHes through the first one's admin API: guest latency on the writing hypervisor and
on the others, write latency and watch lag (write acknowledged on the writing
hypervisor until a guest on another is served it). Run as
`python -m transparent_md.lab.bench.fleet` (root: it builds namespaces and starts its
own etcd; scripts/bench-fleet does that)."""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from transparent_md.lab.etcd import FLEET_ETCD_IPS, EtcdCluster, fleet_network
from transparent_md.lab.fleet_load import FleetUnderWrites, figures, run_load
from transparent_md.lab.hypervisor import Hypervisor
from transparent_md.lab.netns import Topology

DEFAULT_RECORDS = 10_000
DEFAULT_RATE = 100          # writes per second, the figure
DEFAULT_WRITE_S = 10.0
# The fleet under writes: guests ask this often each (on new connections), the writes
# come from this many concurrent admin API clients, after this long of steady state.
DEFAULT_GUEST_RATE = 20.0
DEFAULT_WRITE_CLIENTS = 64
DEFAULT_STEADY_S = 10.0
DEFAULT_UNDER_WRITES_S = 30.0
# The reader looks at the cache this often: the resolution of the lag figures.
CACHE_POLL_S = 0.002

WRITER = r"""
import dataclasses, json, sys, time
from transparent_md.datapath.responder_side import entered_netns
from transparent_md.store import open_store, parse_record
url, count, rate, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
store = open_store(url)
if count:
    started = time.monotonic()
    def mac(n):
        return "02:10:" + ":".join(f"{n >> s & 255:02x}" for s in (16, 8, 0)) + ":01"
    store.put_many([parse_record({"instance_id": f"i-{n:05d}", "mac": mac(n),
                                  "hostname": f"vm-{n}", "user_data": "#!/bin/sh\n" + "x" * 200})
                    for n in range(count)])
    print(json.dumps({"loaded_s": time.monotonic() - started}), flush=True)
    sys.exit(0)
from transparent_md.store.etcd_client import b64
commits = []
records = {f"i-{n:05d}": store.entry(f"i-{n:05d}") for n in range(1000)}
validated = sys.argv[5] == "validated"
interval, n, start = 1.0 / rate, 0, time.monotonic()
while time.monotonic() - start < seconds:
    n += 1
    key = f"i-{n % 1000:05d}"
    record = dataclasses.replace(records[key].instance, hostname=f"w{n}")
    if validated:  # the full path: every record checked, prefix + key compares
        revision = store.put_many([record])[key]
    else:  # compare-and-swap on the key's mod revision alone, as a VM manager might
        etcd_key = b64(store.key(key))
        reply = store.client.txn(
            [{"key": etcd_key, "target": "MOD", "result": "EQUAL",
              "mod_revision": str(records[key].revision)}],
            [{"request_put": {"key": etcd_key,
                              "value": b64(json.dumps(record.to_mapping()))}}])
        assert reply.get("succeeded"), reply
        revision = int(reply["header"]["revision"])
    records[key] = type(records[key])(record, revision)
    commits.append((revision, time.time()))
    time.sleep(max(0.0, start + n * interval - time.monotonic()))
print(json.dumps({"commits": commits}), flush=True)
"""


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _sync_seconds(log: str) -> float | None:
    """The cache's own part of a start: the resync line's seconds (0 when warm)."""
    for line in log.splitlines():
        if "resynchronised:" in line:
            return float(line.rsplit(" in ", 1)[1].split()[0])
    return 0.0


def _cache_revision(path: str) -> int:
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
            row = db.execute("SELECT value FROM fleet WHERE name = 'revision'").fetchone()
        return int(row[0]) if row else 0
    except sqlite3.Error:
        return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=DEFAULT_RECORDS)
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE)
    parser.add_argument("--seconds", type=float, default=DEFAULT_WRITE_S)
    parser.add_argument("--writer", choices=["cas", "validated"], default="cas",
                        help="cas: per-key compare-and-swap puts (reaches 100/s); "
                        "validated: the CLI's path, every write checked against every "
                        "record (about 30 ms a write at 10,000 records)")
    parser.add_argument("--under-writes-s", type=float, default=DEFAULT_UNDER_WRITES_S,
                        help="seconds of admin API writes (at --rate) in the 3-daemon fleet")
    parser.add_argument("--steady-s", type=float, default=DEFAULT_STEADY_S)
    parser.add_argument("--write-clients", type=int, default=DEFAULT_WRITE_CLIENTS)
    parser.add_argument("--guest-rate", type=float, default=DEFAULT_GUEST_RATE)
    args = parser.parse_args()
    found = single_daemon(args)
    found["under_writes"] = under_writes(args)
    print(json.dumps(found, indent=2))
    return 0


def under_writes(args: argparse.Namespace) -> dict:
    """Issue 26's figures: 3 etcd members, 3 daemons, writes through the first's API."""
    with Topology() as topo, tempfile.TemporaryDirectory(prefix="tmd-fleet-") as tmp:
        world = FleetUnderWrites(topo, Path(tmp)).build()
        try:
            load_s = world.load(args.records)
            world.start_daemons()
            result = run_load(world, steady_s=args.steady_s, write_s=args.under_writes_s,
                              rate=args.rate, clients=args.write_clients,
                              guest_rate=args.guest_rate, fillers=args.records)
            found = {"etcd_members": world.members, "daemons": len(world.daemons),
                     "records": args.records + len(world.guest_records()),
                     "import_s": round(load_s, 2), "write_rate": args.rate,
                     "write_clients": args.write_clients, **figures(result)}
            writing, others = found["guest_ms_writing_hv"], found["guest_ms_other_hvs"]
            if writing and others and others["p99"]:
                found["guest_p99_writing_over_others"] = round(writing["p99"] / others["p99"],
                                                               2)
            found["tracebacks"] = sum("Traceback" in log for log in world.logs())
            return found
        finally:
            world.stop()


def single_daemon(args: argparse.Namespace) -> dict:
    """Issue 13's figures: one daemon on a one-member etcd."""
    figures: dict = {"records": args.records, "write_rate": args.rate, "writer": args.writer}
    with Topology() as topo, tempfile.TemporaryDirectory(prefix="tmd-fleet-") as tmp:
        etcd_ns = topo.add_ns("etcd")
        hv = Hypervisor(topo, "hv1")
        hv.bridge("br0")
        fleet_network(topo, etcd_ns, [hv.ns], FLEET_ETCD_IPS[:1])
        etcd = EtcdCluster(topo, etcd_ns, FLEET_ETCD_IPS[:1], Path(tmp) / "etcd").start()
        url = etcd.url("/bench")
        loaded = topo.sh(hv.ns, [sys.executable, "-c", WRITER, url, str(args.records), "0", "0",
                                  "-"])
        if loaded.returncode:
            raise SystemExit(loaded.stderr)
        figures["import_s"] = round(json.loads(loaded.stdout)["loaded_s"], 2)
        cache = str(Path(tmp) / "cache.db")
        extra = ["--cache", cache, "--api", "none"]
        for phase in ("cold_start_s", "warm_start_s"):
            started = time.monotonic()
            daemon = hv.start_daemon(["br0"], url, extra=extra)
            figures[phase] = round(time.monotonic() - started, 2)
            figures[phase.replace("start", "sync")] = _sync_seconds(daemon.log())
            if phase == "cold_start_s":
                daemon.stop()
        figures["daemon_rss_mib"] = round(_rss_kib(daemon.proc.pid) / 1024, 1)

        seen: dict[int, float] = {}
        stop = threading.Event()

        def watch_cache() -> None:
            last = 0
            while not stop.is_set():
                revision = _cache_revision(cache)
                if revision != last:
                    seen[revision] = time.time()
                    last = revision
                time.sleep(CACHE_POLL_S)

        reader = threading.Thread(target=watch_cache, daemon=True)
        reader.start()
        writes = topo.sh(hv.ns, [sys.executable, "-c", WRITER, url, "0", str(args.rate),
                                 str(args.seconds), args.writer])
        if writes.returncode:
            raise SystemExit(writes.stderr)
        time.sleep(1.0)
        stop.set()
        reader.join()
        commits = json.loads(writes.stdout)["commits"]
        lags = []
        for revision, committed in commits:
            later = [t for r, t in seen.items() if r >= revision]
            if later:
                lags.append(min(later) - committed)
        lags_ms = sorted(1000 * max(0.0, lag) for lag in lags)
        figures["writes"] = len(commits)
        figures["writes_seen"] = len(lags_ms)
        figures["achieved_rate"] = round(len(commits) / args.seconds, 1)
        if lags_ms:
            figures["watch_lag_ms"] = {
                "p50": round(statistics.median(lags_ms), 1),
                "p99": round(lags_ms[min(len(lags_ms) - 1, int(len(lags_ms) * 0.99))], 1),
                "max": round(lags_ms[-1], 1)}
        figures["daemon_rss_mib_after_writes"] = round(_rss_kib(daemon.proc.pid) / 1024, 1)
        daemon.stop()
        etcd.stop()
    return figures


if __name__ == "__main__":
    sys.exit(main())
