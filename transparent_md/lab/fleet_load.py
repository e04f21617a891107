"""A fleet under record writes (issue 26): a 3-member etcd, three hypervisors with a
daemon each (admin API on), guests asking on new connections all along, and single-
record PATCHes through one hypervisor's admin API from concurrent clients.

Used by the slow test (acceptance: no guest or status error, no traceback) and by the
bench's fleet part (figures: guest latency steady and during writes, on the writing
hypervisor and on the others; write latency; watch lag, i.e. a write acknowledged on
the writing hypervisor until a guest on another one is served it).

Every process here is a child started in our namespaces and stopped before `run`
returns; figures come from the children's own clocks (one machine, one clock).
"""

from __future__ import annotations

import collections
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from transparent_md.lab.etcd import FLEET_ETCD_IPS, EtcdCluster, fleet_network
from transparent_md.lab.hypervisor import DaemonProcess, Hypervisor
from transparent_md.lab.netns import Topology

GUEST_ROUTES = ["169.254.169.254/32 dev eth0"]
# Children report after their run; this much longer is a hang.
CHILD_GRACE_S = 120.0
# A write is followed onto another hypervisor by a probe guest polling its own record
# this often (keep-alive): the resolution of the watch-lag figures.
PROBE_INTERVAL_S = 0.01
# One write in this many goes to a probe guest's record (the others to filler records):
# seldom enough that two writes of one record are rarely in flight at once.
PROBE_EVERY = 20
# The status of every daemon is asked this often during the run.
STATUS_INTERVAL_S = 0.5

# A guest asking `rate` times a second on a new connection each time; prints
# [[t, latency_ms, status], ...] (status 0: no answer).
GUEST = r"""
import http.client, json, sys, time
seconds, rate = float(sys.argv[1]), float(sys.argv[2])
out, errors = [], []
start = time.monotonic()
n = 0
while time.monotonic() - start < seconds:
    n += 1
    t0 = time.time()
    begun = time.perf_counter()
    try:
        conn = http.client.HTTPConnection("169.254.169.254", 80, timeout=5)
        conn.request("GET", "/latest/meta-data/instance-id", headers={"Connection": "close"})
        reply = conn.getresponse()
        reply.read()
        status = reply.status
        conn.close()
    except Exception as exc:
        status = 0
        errors.append([t0, repr(exc)[:200]])
    out.append([t0, round((time.perf_counter() - begun) * 1000, 3), status])
    time.sleep(max(0.0, start + n / rate - time.monotonic()))
print(json.dumps(out))
if errors:
    print(json.dumps(errors), file=sys.stderr)
"""

# A guest polling its own hostname over one keep-alive connection; prints the first
# time each value was seen: [[t, value], ...].
PROBE = r"""
import http.client, json, sys, time
seconds, interval = float(sys.argv[1]), float(sys.argv[2])
seen, last, conn = [], None, None
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    try:
        if conn is None:
            conn = http.client.HTTPConnection("169.254.169.254", 80, timeout=5)
        conn.request("GET", "/latest/meta-data/hostname")
        reply = conn.getresponse()
        value = reply.read().decode()
        if reply.status == 200 and value != last:
            seen.append([time.time(), value])
            last = value
    except Exception:
        conn = None
    time.sleep(interval)
print(json.dumps(seen))
"""

# Concurrent clients PATCHing one record each time through an admin API socket, at
# `rate` writes a second in all; prints [[t_ack, latency_ms, status, id, hostname], ...].
WRITER = r"""
import http.client, json, socket, sys, threading, time
path, seconds, rate, clients = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
targets = json.loads(sys.argv[5])
probe_every = int(sys.argv[6])
probes = json.loads(sys.argv[7])

class Unix(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(path)

out, lock, busy = [], threading.Lock(), set()
start = time.monotonic() + 0.2
def client(k):
    conn = Unix("localhost")
    n = k
    while True:
        due = start + n / rate
        if due - start >= seconds:
            return
        time.sleep(max(0.0, due - time.monotonic()))
        target = targets[n % len(targets)]
        if probes and n % probe_every == 0:
            with lock:  # one write of a probe's record at a time, as a VM manager would
                probe = probes[(n // probe_every) % len(probes)]
                if probe not in busy:
                    busy.add(probe)
                    target = probe
        hostname = f"w{n}"
        body = json.dumps({"hostname": hostname})
        begun = time.perf_counter()
        try:
            conn.request("PATCH", f"/v1/instances/{target}", body=body,
                         headers={"Content-Type": "application/json"})
            reply = conn.getresponse()
            reply.read()
            status = reply.status
        except Exception:
            status = 0
            conn = Unix("localhost")
        with lock:
            out.append([time.time(), round((time.perf_counter() - begun) * 1000, 3), status,
                        target, hostname])
            busy.discard(target)
        n += clients
threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(out))
"""

# GET /v1/status on every socket given, every interval; prints {"ok": n, "failed": [...]}.
STATUS = r"""
import http.client, json, socket, sys, time
seconds, interval, paths = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
class Unix(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=30)
        self.path = path
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(self.path)
ok, failed = 0, []
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    for path in paths:
        try:
            conn = Unix(path)
            conn.request("GET", "/v1/status")
            reply = conn.getresponse()
            body = reply.read()
            conn.close()
            if reply.status == 200:
                ok += 1
            else:
                failed.append(f"{path}: {reply.status} {body[:200]!r}")
        except Exception as exc:
            failed.append(f"{path}: {exc}")
    time.sleep(interval)
print(json.dumps({"ok": ok, "failed": failed}))
"""


@dataclass
class FleetUnderWrites:
    """The world: etcd members, hypervisors with guests, their daemons and sockets."""

    topo: Topology
    tmp: Path
    members: int = 3
    hypervisors: int = 3
    guests_per_hv: int = 2
    hvs: list[Hypervisor] = field(default_factory=list)
    daemons: list[DaemonProcess] = field(default_factory=list)
    etcd: EtcdCluster | None = None
    url: str = ""

    def build(self) -> FleetUnderWrites:
        etcd_ns = self.topo.add_ns("etcd")
        self.hvs = [Hypervisor(self.topo, f"hv{i + 1}") for i in range(self.hypervisors)]
        fleet_network(self.topo, etcd_ns, [hv.ns for hv in self.hvs],
                      FLEET_ETCD_IPS[:self.members])
        self.etcd = EtcdCluster(self.topo, etcd_ns, FLEET_ETCD_IPS[:self.members],
                                self.tmp / "etcd").start()
        self.url = self.etcd.url("/fleet")
        for h, hv in enumerate(self.hvs):
            hv.bridge("br0")
            for g in range(self.guests_per_hv):
                hv.guest(f"hv{h + 1}-g{g}", bridge="br0", port=f"p{g}",
                         addr=f"10.0.0.{10 + g}/24", routes=GUEST_ROUTES,
                         mac=f"02:00:00:00:{h + 1:02x}:{g + 1:02x}")
            hv.guest(self.probe_role(h), bridge="br0", port="pp", addr="10.0.0.99/24",
                     routes=GUEST_ROUTES, mac=f"02:00:00:00:{h + 1:02x}:99")
        return self

    @staticmethod
    def probe_role(h: int) -> str:
        """The guest of hypervisor `h` that follows its own record (watch lag)."""
        return f"hv{h + 1}-probe"

    def askers(self, h: int) -> list[str]:
        """The namespaces of hypervisor `h`'s guests that only ask (not the probe)."""
        return [g.ns for role, g in self.hvs[h].guests.items() if role != self.probe_role(h)]

    def guest_records(self) -> list[dict]:
        records = []
        for hv in self.hvs:
            for role, guest in hv.guests.items():
                records.append({"instance_id": role, "mac": guest.mac,
                                "bridge": "br0", "port": guest.port, "hostname": role})
        return records

    def load(self, fillers: int) -> float:
        """Write the guests' records and `fillers` others; returns the seconds it took."""
        records = self.guest_records() + [
            {"instance_id": f"f-{n:05d}", "bridge": "br-other",
             "mac": "02:10:" + ":".join(f"{n >> s & 255:02x}" for s in (16, 8, 0)) + ":01",
             "hostname": f"filler-{n}"} for n in range(fillers)]
        path = self.tmp / "records.json"
        path.write_text(json.dumps(records))
        started = time.monotonic()
        res = self.topo.sh(self.hvs[0].ns, [sys.executable, "-m", "transparent_md",
                                            "instance", "import", str(path), "--store",
                                            self.url])
        if res.returncode:
            raise RuntimeError(f"import failed: {res.stderr}")
        return time.monotonic() - started

    def api_socket(self, h: int) -> str:
        return str(self.tmp / f"api-hv{h + 1}.sock")

    def start_daemons(self) -> None:
        for h, hv in enumerate(self.hvs):
            self.daemons.append(hv.start_daemon(
                ["br0"], self.url, extra=["--cache", str(self.tmp / f"cache-hv{h + 1}.db"),
                                          "--api", self.api_socket(h)]))

    def stop(self) -> None:
        for daemon in self.daemons:
            daemon.stop()
        if self.etcd is not None:
            self.etcd.stop()

    def logs(self) -> list[str]:
        return [d.log() for d in self.daemons]


@dataclass
class LoadResult:
    """Raw samples of one run (times are the children's wall clock)."""

    steady: tuple[float, float]
    writing: tuple[float, float]
    guests: dict[int, list[list]]   # hypervisor index -> [t, latency_ms, status]
    writes: list[list]              # [t_ack, latency_ms, status, id, hostname]
    probes: dict[int, list[list]]   # hypervisor index -> [t, value]
    status: dict

    def guest_errors(self) -> int:
        return sum(1 for samples in self.guests.values() for s in samples if s[2] != 200)

    def write_errors(self) -> list[list]:
        return [w for w in self.writes if w[2] != 200]


def run_load(world: FleetUnderWrites, *, steady_s: float, write_s: float, rate: float,
             clients: int, guest_rate: float, fillers: int) -> LoadResult:
    """Guests ask through a steady phase, then through `write_s` of writes at `rate`
    through the first hypervisor's admin API; the status of every daemon is asked all
    along."""
    total = steady_s + write_s + 1.0
    topo = world.topo
    guests = {h: [topo.spawn(ns, [sys.executable, "-c", GUEST, str(total), str(guest_rate)],
                             stdout=subprocess.PIPE, text=True)
                  for ns in world.askers(h)]
              for h in range(len(world.hvs))}
    probes = {h: topo.spawn(hv.guests[world.probe_role(h)].ns,
                            [sys.executable, "-c", PROBE, str(total), str(PROBE_INTERVAL_S)],
                            stdout=subprocess.PIPE, text=True)
              for h, hv in enumerate(world.hvs) if h > 0}
    status = subprocess.Popen([sys.executable, "-c", STATUS, str(total), str(STATUS_INTERVAL_S),
                               *(world.api_socket(h) for h in range(len(world.hvs)))],
                              stdout=subprocess.PIPE, text=True)
    steady_from = time.time()
    time.sleep(steady_s)
    writing_from = time.time()
    targets = [f"f-{n:05d}" for n in range(fillers)]
    probe_ids = [world.probe_role(h) for h in probes]
    writer = subprocess.run(
        [sys.executable, "-c", WRITER, world.api_socket(0), str(write_s), str(rate),
         str(clients), json.dumps(targets), str(PROBE_EVERY), json.dumps(probe_ids)],
        capture_output=True, text=True, timeout=write_s + CHILD_GRACE_S)
    writing_to = time.time()
    if writer.returncode:
        raise RuntimeError(f"writer failed: {writer.stderr}")

    def collect(proc: subprocess.Popen) -> list:
        out, _ = proc.communicate(timeout=total + CHILD_GRACE_S)
        return json.loads(out)

    return LoadResult(
        steady=(steady_from, writing_from), writing=(writing_from, writing_to),
        guests={h: [s for p in procs for s in collect(p)] for h, procs in guests.items()},
        writes=json.loads(writer.stdout),
        probes={h: collect(p) for h, p in probes.items()},
        status=json.loads(status.communicate(timeout=total + CHILD_GRACE_S)[0]))


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    return {"p50": round(statistics.median(ordered), 2),
            "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2),
            "max": round(ordered[-1], 2), "n": len(ordered)}


def figures(result: LoadResult) -> dict:
    """What the bench reports: guest latency (ms) steady and during writes, on the
    writing hypervisor and on the others; write latency; watch lag (ms)."""

    def guest_ms(hvs: list[int], window: tuple[float, float]) -> dict:
        return percentiles([s[1] for h in hvs for s in result.guests[h]
                            if window[0] <= s[0] < window[1] and s[2] == 200])

    others = [h for h in result.guests if h != 0]
    acked = {w[4]: w[0] for w in result.writes if w[2] == 200}
    lags = [1000 * max(0.0, t - acked[value]) for samples in result.probes.values()
            for t, value in samples if value in acked]
    write_s = result.writing[1] - result.writing[0]
    return {
        "guest_ms_steady": guest_ms(list(result.guests), result.steady),
        "guest_ms_writing_hv": guest_ms([0], result.writing),
        "guest_ms_other_hvs": guest_ms(others, result.writing),
        "write_ms": percentiles([w[1] for w in result.writes if w[2] == 200]),
        "writes_per_s": round(len(acked) / write_s, 1) if write_s > 0 else 0,
        "watch_lag_ms": percentiles(lags),
        "guest_errors": result.guest_errors(),
        "guest_error_statuses": dict(collections.Counter(
            str(s[2]) for samples in result.guests.values() for s in samples if s[2] != 200)),
        "write_errors": len(result.write_errors()),
        "status_errors": len(result.status["failed"]),
    }


__all__ = ["FleetUnderWrites", "LoadResult", "figures", "run_load"]
