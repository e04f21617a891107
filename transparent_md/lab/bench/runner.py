"""The whole benchmark in one run, so every ratio compares figures taken side by side.

Order: build namespaces and the store, start the daemon and the comparison servers,
check each answers correctly, then per connection mode load every server in turn
(the tc path right before its loopback twin), then the boot storm, then read the
daemon's memory. Everything is torn down in `finally`, also on Ctrl-C.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from transparent_md.datapath.responder_side import METADATA_IP
from transparent_md.lab.bench import (
    hostile,
    netstat,
    records,
    servers,
    storm,
    syscalls,
    topology,
    wrk,
)
from transparent_md.lab.bench.measure import (
    KEEP_ALIVE,
    MODES,
    NEW_CONNECTION,
    Measurement,
    Target,
    measure,
    median_rows,
    repeat,
)
from transparent_md.lab.bench.procstat import (
    CpuWindow,
    host_cpu_ticks,
    peak_rss_mib,
    process_tree,
    rss_mib,
)
from transparent_md.lab.hypervisor import Hypervisor, daemon_names
from transparent_md.lab.netns import NETNS_DIR, Topology

# Loopback ports in the hypervisor namespace (nothing else listens there).
LOOPBACK = "127.0.0.1"
LOOPBACK_RESPONDER_PORT = 8080
NGINX_PORT = 8081
AIOHTTP_PORT = 8082
# nginx in the router-like namespace listens where a guest's web server would.
ROUTER_NGINX_PORT = 80
# ... and the uvloop + httptools floor beside it.
ROUTER_FLOOR_PORT = 81
# The storm drivers' own limit: M guests x ~50 requests must end well within this,
# plus the window, plus this much per guest (a big storm on a small machine).
STORM_TIMEOUT_S = 120.0
STORM_TIMEOUT_PER_GUEST_S = 0.1
# The drivers start this long before the storm's first guest: room to import and set up.
STORM_LEAD_S = 2.0
# The daemon's responder namespace: `<--name>-<inode of its netns>-responder`.
DAEMON_NAME = "tmd"
# The raw datapath's rows (the tc path's key is "tc").
RAW_KEY = "raw"

Progress = Callable[[str], None]


# The wrk load is one guest asking thousands of times a second, which the per-port SYN
# rate and the per-guest request rate exist to stop; they are lifted for the throughput
# rows (and keep-alive connections are not recycled, as for nginx). Every other
# protection stays on, so its cost is in the figures. The hostile table runs defaults.
LOAD_GENERATOR_FLAGS = ("--port-syn-rate", "0", "--request-rate", "0",
                        "--keepalive-requests", "0")


@dataclass(frozen=True)
class Settings:
    guests: int = 8
    duration_s: float = 5.0
    storm_guests: int = 200
    workers: int = 1  # the daemon's `run --workers`
    storm_window_s: float = 1.0
    storm_drivers: int = os.cpu_count() or 1  # processes playing the storm's guests
    rounds: int = 3  # interleaved load rounds; each row is the median round
    syscall_requests: int = syscalls.DEFAULT_REQUESTS  # per traced run; 0 skips tracing
    records: int = records.DEFAULT_RECORDS
    netns_prefix: str | None = None  # base of namespace names (lab.netns.netns_prefix)
    # `bench --quick`: runs too short to hold a figure against a target; none is judged.
    indicative: bool = False
    neighbour_attacks: hostile.HostileSettings | None = hostile.DEFAULT  # None: skip it
    # Then the same daemon on the raw-socket datapath (`run --datapath raw`): its load
    # rows and its own boot storm, on the same guests.
    raw_datapath: bool = True


def machine() -> dict:
    """The machine, and how busy it was before the run began (others' work skews every
    figure: the report says so)."""
    return {"cpus": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "host": platform.node(),
            "load_before": round(os.getloadavg()[0], 2)}


class BenchRun:
    """Owns the topology and servers of one run; `execute()` returns the raw results."""

    def __init__(self, settings: Settings, progress: Progress) -> None:
        self.s = settings
        self.say = progress
        self.workdir = Path(tempfile.mkdtemp(prefix="tmd-bench-"))
        self.topo = Topology(settings.netns_prefix)
        self.daemon = None
        self.hv: Hypervisor | None = None
        self.responder_ns: str | None = None

    # -- set-up ---------------------------------------------------------------------
    def build(self) -> None:
        self.build_guests(self.s.guests)
        self.start_daemon("tc")
        self.router_ns = topology.build_router(self.hv)
        self.rt_ns, self.dnat_guests = topology.build_dnat_segment(self.topo, self.s.guests)
        self.hook = wrk.write_hook(self.workdir)

    def build_guests(self, load_guests: int) -> None:
        """The hypervisor, `load_guests` load guests, the storm guests and the store
        holding their records (and `records` in all)."""
        s = self.s
        self.say(f"building {load_guests} guests + {s.storm_guests} storm guests "
                 f"(namespaces prefixed {self.topo.prefix})")
        self.hv = topology.build_hypervisor(self.topo)
        self.guests = topology.add_guests(self.hv, "g", load_guests)
        self.bridges = topology.bridges_for(load_guests + s.storm_guests)
        self.storm_guests = topology.add_guests(self.hv, "s", s.storm_guests, self.bridges)
        self.store = str(self.workdir / "instances.db")
        self.records = records.write_store(self.store, self.guests + self.storm_guests,
                                           s.records)
        self.say(f"store: {self.records} records")

    def start_daemon(self, datapath: str) -> None:
        """The daemon under test on `datapath`, and the storm guests' pinned neighbour
        entry for 169.254.169.254 (its MAC is the new daemon's veth end)."""
        self.daemon = self.hv.start_daemon(self.bridges, self.store,
                                           ["--workers", str(self.s.workers),
                                            *LOAD_GENERATOR_FLAGS], datapath=datapath)
        pinned = self.storm_guests + (self.guests if datapath == RAW_KEY else [])
        if pinned:
            topology.pin_metadata_neighbour(self.hv, pinned,
                                            daemon_names(self.hv.ns, DAEMON_NAME).host_veth)

    def raw_phase(self, rounds: list[Measurement]) -> dict:
        """The daemon again, on the raw datapath: its rows join `rounds` (held against
        the nginx rows of the same round numbers), and its own storm."""
        self.say("raw-socket datapath: restarting the daemon with --datapath raw")
        self.daemon.stop()
        self.daemon = None
        self.start_daemon(RAW_KEY)
        target = Target(RAW_KEY, "transparent-md, raw-socket path", self.daemon.proc.pid,
                        f"http://{METADATA_IP}{records.WRK_PATH}",
                        tuple(g.ns for g in self.guests), True)
        self.check_answer(target)
        for round_ in range(self.s.rounds):
            for mode in MODES:
                m = measure(target, mode, self.s.duration_s, self.hook, round_)
                self.say(f"round {round_ + 1}/{self.s.rounds} {target.label:34} {mode:15} "
                         f"{m.load.rps:10.0f} req/s {m.cpu_us_per_request:7.1f} us/req "
                         f" errors {m.load.errors}")
                rounds.append(m)
        return {"storm": self.boot_storm() if self.s.storm_guests else None}

    def start_servers(self) -> list[Target]:
        """Start every comparison server and check each serves the expected body."""
        hv, g0 = self.hv, self.guests[0]
        path = records.WRK_PATH
        loop = servers.start_static_responder(
            self.topo, hv.ns, self.store, LOOPBACK, LOOPBACK_RESPONDER_PORT,
            {LOOPBACK: g0.identity()}, self.workdir, "loopback")
        dnat_ids = {ip: g.identity() for ip, g in
                    zip(topology.dnat_guest_ips(len(self.dnat_guests)), self.guests,
                        strict=True)}
        dnat = servers.start_static_responder(
            self.topo, self.rt_ns, self.store, topology.DNAT_ROUTER, topology.DNAT_PORT,
            dnat_ids, self.workdir, "dnat")
        nginx = servers.start_nginx(self.topo, hv.ns, LOOPBACK, NGINX_PORT,
                                    records.FIXED_BODY, self.workdir)
        (self.workdir / "router-nginx").mkdir()
        router_nginx = servers.start_nginx(self.topo, self.router_ns, "0.0.0.0",
                                           ROUTER_NGINX_PORT, records.FIXED_BODY,
                                           self.workdir / "router-nginx")
        floor = servers.start_floor(self.topo, self.router_ns, "0.0.0.0", ROUTER_FLOOR_PORT,
                                    records.FIXED_BODY)
        nginx_urls = router_urls(self.guests, ROUTER_NGINX_PORT, path)
        floor_urls = router_urls(self.guests, ROUTER_FLOOR_PORT, path)
        aio = servers.start_aiohttp(self.topo, hv.ns, LOOPBACK, AIOHTTP_PORT,
                                    records.FIXED_BODY)
        n = self.s.guests
        metadata = f"http://{METADATA_IP}{path}"
        targets = [
            Target("tc", "transparent-md, tc path", self.daemon.proc.pid, metadata,
                   tuple(g.ns for g in self.guests), True),
            Target("tc6", "transparent-md, tc path, IPv6", self.daemon.proc.pid,
                   f"http://[{topology.METADATA_IP6}]{path}",
                   tuple(g.ns for g in self.guests), True),
            Target("loopback", "transparent-md, loopback", loop.pid, loop.url + path,
                   repeat(hv.ns, n), True),
            Target("nft-dnat", "transparent-md, nft DNAT", dnat.pid, metadata,
                   tuple(self.dnat_guests), True),
            Target("nginx-router", "nginx on the bridge (fixed body)", router_nginx.pid,
                   nginx_urls[0], tuple(g.ns for g in self.guests), False, nginx_urls),
            Target("floor-router", "uvloop + httptools floor on the bridge (fixed body)",
                   floor.pid, floor_urls[0], tuple(g.ns for g in self.guests), False,
                   floor_urls),
            Target("nginx", "nginx (fixed body)", nginx.pid, nginx.url + path,
                   repeat(hv.ns, n), False),
            Target("aiohttp", "aiohttp (fixed body)", aio.pid, aio.url + path,
                   repeat(hv.ns, n), False),
        ]
        for t in targets:
            self.check_answer(t)
        return targets

    def check_answer(self, target: Target) -> None:
        """A wrong answer (404 from an unknown guest) must not pass for a fast one."""
        ns, url = target.clients[0], target.urls()[0]
        res = self.topo.sh(ns, ["curl", "-g", "-sS", "-m", "5", url])
        expected = self.guests[0].instance_id if target.ours else records.FIXED_BODY
        if res.returncode != 0 or res.stdout.strip() != expected:
            raise RuntimeError(f"{target.label}: expected {expected!r} from {url} in "
                               f"{ns}, got {res.stdout.strip()[:80]!r} {res.stderr.strip()}")

    # -- measurements ---------------------------------------------------------------
    def load_runs(self, targets: list[Target]) -> list[Measurement]:
        """Every round loads every server in both modes, in the same order."""
        out = []
        for round_ in range(self.s.rounds):
            for mode in MODES:
                for t in targets:
                    m = measure(t, mode, self.s.duration_s, self.hook, round_)
                    self.say(f"round {round_ + 1}/{self.s.rounds} {t.label:34} {mode:15} "
                             f"{m.load.rps:10.0f} req/s {m.cpu_us_per_request:7.1f} us/req "
                             f" errors {m.load.errors}")
                    out.append(m)
        return out

    def syscall_counts(self, targets: list[Target]) -> list[dict]:
        """strace -c of the daemon and of nginx on the bridge, both modes."""
        out = []
        for key in ("tc", "nginx-router"):
            target = next(t for t in targets if t.key == key)
            for mode in (NEW_CONNECTION, KEEP_ALIVE):
                c = syscalls.count(target, mode, self.s.syscall_requests, self.workdir)
                self.say(f"syscalls {target.label:34} {mode:15} {c.total:6.2f} per request "
                         f"over {c.requests} requests")
                out.append(c.to_json())
        return out

    def boot_storm(self) -> dict:
        s = self.s
        self.say(f"boot storm: {s.storm_guests} guests within {s.storm_window_s:g} s, "
                 f"{s.storm_drivers} driver processes")
        specs = storm.split([g.ns for g in self.storm_guests], s.storm_window_s,
                            s.storm_drivers, time.monotonic() + STORM_LEAD_S)
        responder_ns = daemon_namespace(self.hv.ns)
        daemon_pid = self.daemon.proc.pid
        tcp_before = netstat.counters(responder_ns, daemon_pid) if responder_ns else {}
        window = CpuWindow(self.daemon.proc.pid)
        host_before = host_cpu_ticks()
        window.start()
        parts = self._run_storm_drivers(specs)
        cpu = window.stop()
        host_after = host_cpu_ticks()
        result = storm.merge(parts, len(self.storm_guests), s.storm_window_s)
        result["responder_tcp"] = (
            netstat.delta(tcp_before, netstat.counters(responder_ns, daemon_pid))
            if responder_ns else {})
        result["server_cpu_us_per_request"] = (
            round(cpu * 1e6 / result["requests"], 2) if result["requests"] else None)
        # The drivers share the host's CPUs with the daemon: when they are all busy the
        # storm's latency is queueing for a CPU, not the daemon's own.
        busy, total = (after - before for after, before in zip(host_after, host_before,
                                                                 strict=True))
        result["host_cpu_busy"] = round(busy / total, 3) if total else None
        self.say(f"storm: {result['requests']} requests, {result['failures']} failures, "
                 f"p99 {result['p99_ms']:.1f} ms, last guest done at "
                 f"{result['last_guest_done_s']:.2f} s")
        return result

    def _run_storm_drivers(self, specs: list[dict]) -> list[dict]:
        """Run one driver process per spec at once; their parts, or an error naming the
        driver that failed (all are stopped). Each writes its part and its stderr to
        files, so no driver ever waits on a pipe while another is being read."""
        procs = []
        paths = [self.workdir / f"storm-{k}.json" for k in range(len(specs))]
        try:
            for spec, path in zip(specs, paths, strict=True):
                path.write_text(json.dumps({**spec, "result": str(path.with_suffix(".out"))}))
                with path.with_suffix(".err").open("w") as err:
                    procs.append(subprocess.Popen(
                        [sys.executable, "-m", "transparent_md.lab.bench.storm", str(path)],
                        stdout=subprocess.DEVNULL, stderr=err))
            deadline = (time.monotonic() + STORM_TIMEOUT_S + self.s.storm_window_s
                        + STORM_TIMEOUT_PER_GUEST_S * len(self.storm_guests))
            parts = []
            for k, (proc, path) in enumerate(zip(procs, paths, strict=True)):
                if proc.wait(timeout=max(0.0, deadline - time.monotonic())) != 0:
                    raise RuntimeError(f"storm driver {k} failed:\n"
                                       f"{path.with_suffix('.err').read_text()[-3000:]}")
                parts.append(json.loads(path.with_suffix(".out").read_text()))
            return parts
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()

    def memory(self, responder_only_pid: int) -> dict:
        """The daemon's RSS, and for contrast the loopback Responder's: same code, same
        records, but no datapath in its process. With --workers, all its processes."""
        pids = process_tree(self.daemon.proc.pid)
        return {"records": self.records, "rss_mib": round(rss_mib(pids), 1),
                "peak_rss_mib": round(peak_rss_mib(pids), 1),
                "responder_only_rss_mib": round(rss_mib([responder_only_pid]), 1)}

    # -- whole run ------------------------------------------------------------------
    def execute(self) -> dict:
        started = time.monotonic()
        host = machine()  # before the run loads it
        try:
            self.build()
            targets = self.start_servers()
            rounds = self.load_runs(targets)
            traced = self.syscall_counts(targets) if self.s.syscall_requests else []
            storm = self.boot_storm() if self.s.storm_guests else None
            memory = self.memory(next(t.pid for t in targets if t.key == "loopback"))
            raw_path = self.raw_phase(rounds) if self.s.raw_datapath else None
        finally:
            self.close()
        neighbours = (hostile.run(self.s.neighbour_attacks, self.say, self.s.netns_prefix)
                      if self.s.neighbour_attacks else None)
        return {
            "machine": host,
            "settings": {**asdict(self.s), "connections_per_guest":
                         wrk.CONNECTIONS_PER_CLIENT},
            "namespaces": {"prefix": self.topo.prefix,
                           "daemon_responder": self.responder_ns},
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "elapsed_s": round(time.monotonic() - started, 1),
            "loads": median_rows(rounds),
            "rounds": rounds,
            "syscalls": traced,
            "storm": storm,
            "storm_raw": raw_path["storm"] if raw_path else None,
            "memory": memory,
            "hostile": neighbours,
        }

    def storm_only(self, datapath: str) -> dict:
        """`bench --storm-only DATAPATH`: only the storm guests, the daemon on `datapath`
        and one boot storm; no load rows, servers or hostile table."""
        started = time.monotonic()
        host = machine()
        try:
            self.build_guests(0)
            self.start_daemon(datapath)
            result = self.boot_storm()
        finally:
            self.close()
        return {"machine": host, "datapath": datapath, "settings": asdict(self.s),
                "namespaces": {"prefix": self.topo.prefix,
                               "daemon_responder": self.responder_ns},
                "elapsed_s": round(time.monotonic() - started, 1), "storm": result}

    def close(self) -> None:
        hv_ns = self.hv.ns if self.hv else None
        self.responder_ns = responder_ns = daemon_namespace(hv_ns) if hv_ns else None
        if self.daemon is not None:
            self.daemon.stop()  # detaches and removes its responder namespace
        self.topo.close()
        if responder_ns and (Path(NETNS_DIR) / responder_ns).exists():
            # Only if the daemon died without cleaning up: it is this run's namespace.
            subprocess.run(["ip", "netns", "del", responder_ns], capture_output=True)
        shutil.rmtree(self.workdir, ignore_errors=True)


def router_urls(guests: list[topology.BenchGuest], port: int, path: str) -> tuple[str, ...]:
    """Each guest's URL for a server in the router namespace: its own subnet's router."""
    return tuple(f"http://{topology.router_ip(topology.bridge_index_of(g))}:{port}{path}"
                 for g in guests)


def daemon_namespace(hv_ns: str) -> str | None:
    """The responder namespace the daemon in `hv_ns` creates (named by hv's inode)."""
    try:
        return daemon_names(hv_ns, DAEMON_NAME).responder_netns
    except OSError:
        return None
