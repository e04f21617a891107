"""The hostile-neighbour table: what one attacking guest costs its neighbour.

For each attack in ATTACKS, one guest attacks while a neighbour crawls like a
booting cloud-init (40 GETs, a fresh connection each, repeated); the neighbour's
requests, failures and p50/p99 latency are the figures. Everything runs twice: the
daemon with its default protections, and with every protection flag set to its
"off" value (PROTECTIONS_OFF; flags this daemon does not know yet are listed as
missing). Both daemons start as systemd starts a unit without LimitNOFILE (soft
RLIMIT_NOFILE 1024). The section builds its own namespaces (the bench's prefix) and
removes them, also on failure.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from transparent_md.lab.attacks.flood import SENDING as FLOOD_SENDING
from transparent_md.lab.attacks.launch import (
    TOOL_GRACE_S,
    Tool,
    known_flags,
    rss_bytes,
    secondary_addresses,
    serving_pid,
    start_limited_daemon,
    widen_local_ports,
)
from transparent_md.lab.hypervisor import GuestNs, Hypervisor
from transparent_md.lab.netns import Topology
from transparent_md.store import open_store, parse_record

Progress = Callable[[str], None]

BRIDGES = ("brh0", "brh1")
SUBNET = {"brh0": "10.30.0", "brh1": "10.31.0"}
METADATA_ROUTE = "169.254.169.254/32 dev eth0"
# One source address per connection-flood style: each its own identity on the port.
ATTACK_SOURCES = ("10.30.0.201", "10.30.0.202", "10.30.0.203")
WRK_CONNECTIONS = 32
WRK_URL = "http://169.254.169.254/latest/meta-data/instance-id"

FLOOD, IDLE, SLOWLORIS, KEEPALIVE = ("random-frame flood", "idle connections", "slowloris",
                                     "keep-alive hold")
WRK_KEEPALIVE, WRK_CLOSE, FORGED = "wrk keep-alive", "wrk Connection: close", "forged MAC+IP"
UNREAD = "unread replies"
# The flood runs last: without protections it leaves the identity table full.
ATTACKS = (IDLE, SLOWLORIS, KEEPALIVE, UNREAD, WRK_KEEPALIVE, WRK_CLOSE, FORGED, FLOOD)
CONNFLOOD_STYLE = {IDLE: "idle", SLOWLORIS: "slowloris", KEEPALIVE: "keepalive"}
# The attacker's user-data: EC2's largest, so each unread reply is as large as any.
ATTACKER_USER_DATA = "#cloud-config\n# " + "u" * (16 * 1024 - 20) + "\n"
# Requests each unread connection pipelines: with protections off, a mebibyte of
# replies per connection stays in the daemon.
UNREAD_PIPELINE = 64

# Every protection off: 0 disables a quota, a rate or a bound in `transparent-md run`.
PROTECTIONS_OFF: dict[str, str | None] = {
    "--port-identity-quota": "0", "--port-syn-rate": "0", "--port-syn-burst": "0",
    "--port-mac-quota": "0", "--no-mac-lock": None,
    "--max-conns-per-identity": "0", "--max-conns-per-port": "0",
    "--max-conns-unknown": "0", "--keepalive-requests": "0", "--keepalive-time": "0",
    "--header-timeout": "0", "--request-rate": "0", "--max-unsent-bytes": "0",
    "--send-timeout": "0",
}
ON, OFF = "defaults", "off"  # the names HostileSettings.protections uses


@dataclass(frozen=True)
class HostileSettings:
    crawl_s: float = 1.5      # the neighbour's crawl under each attack
    ramp_s: float = 1.0       # the attack's head start (connections opened, wrk running)
    connections: int = 2_000  # per connection-flood attack: twice the 1024 soft limit
    # Connections that never read their replies: what protections off cost in memory is
    # this many mebibytes.
    unread_connections: int = 256
    protections: tuple[str, ...] = ("defaults", "off")  # the daemon configurations run


# Part of the default bench: ~50 s for both configurations on 2 cores.
DEFAULT = HostileSettings()
# --quick: every attack once, protections on only (~15 s).
QUICK = HostileSettings(crawl_s=0.5, ramp_s=0.5, connections=1_200, protections=("defaults",))
# --hostile: longer crawls and the 20,000 connections per style.
LONG = HostileSettings(crawl_s=6.0, ramp_s=3.0, connections=20_000)


@dataclass(frozen=True)
class Row:
    attack: str
    protections: str
    requests: int
    failures: int
    p50_ms: float
    p99_ms: float
    attacker: str  # what the attacker got, in a few words


class HostileRun:
    def __init__(self, settings: HostileSettings, progress: Progress,
                 netns_prefix: str | None = None) -> None:
        self.s = settings
        self.say = progress
        self.topo = Topology(netns_prefix)
        self.daemon = None

    def build(self, store: str) -> None:
        self.hv = hv = Hypervisor(self.topo)
        for br in BRIDGES:
            hv.bridge(br)
        self.attacker = self.guest("attacker", BRIDGES[0], 11)
        self.victim = self.guest("victim", BRIDGES[0], 12)
        self.fresh = [self.guest(f"fresh{i}", BRIDGES[1], 20 + i) for i in range(2)]
        secondary_addresses(self.topo, self.attacker.ns, [f"{a}/24" for a in ATTACK_SOURCES])
        widen_local_ports(self.topo, self.attacker.ns)
        self.store = store
        db = open_store(store)
        try:
            db.put_many([parse_record({"instance_id": f"i-{g.ns.rsplit('-', 1)[1]}",
                                       "mac": g.mac, "ip": g.ip, "bridge": g.bridge,
                                       "user_data": ATTACKER_USER_DATA
                                       if g is self.attacker else "#cloud-config\n"})
                         for g in (self.attacker, self.victim, *self.fresh)])
        finally:
            db.close()
        # Same MAC and IP as the victim, on another port of its bridge.
        self.forger = hv.guest("forger", bridge=BRIDGES[0], port="pforger",
                               addr=f"{self.victim.ip}/24", routes=[METADATA_ROUTE],
                               mac=self.victim.mac)

    def guest(self, role: str, bridge: str, host: int) -> GuestNs:
        return self.hv.guest(role, bridge=bridge, port=f"p{role}",
                             addr=f"{SUBNET[bridge]}.{host}/24", routes=[METADATA_ROUTE])

    def crawl(self, ns: str) -> dict:
        return Tool(self.topo, ns, "crawl", ["--seconds", str(self.s.crawl_s)]).result(
            self.s.crawl_s + TOOL_GRACE_S)

    def attack(self, attack: str) -> tuple[dict, str]:
        """Run one attack with the victim crawling; (victim result, attacker summary)."""
        s, ns = self.s, self.attacker.ns
        lasting = s.ramp_s + s.crawl_s
        victim_ns = self.victim.ns
        if attack == UNREAD:
            return self.unread(lasting)
        if attack in CONNFLOOD_STYLE:
            style = CONNFLOOD_STYLE[attack]
            source = ATTACK_SOURCES[list(CONNFLOOD_STYLE).index(attack)]
            tool = Tool(self.topo, ns, "connflood",
                        ["--style", style, "--count", str(s.connections),
                         "--seconds", str(lasting), "--source", source])
            time.sleep(s.ramp_s)
            victim = self.crawl(victim_ns)
            got = tool.result(lasting + TOOL_GRACE_S)
            return victim, f"{got['established']:,} of {got['tried']:,} connected"
        if attack in (WRK_KEEPALIVE, WRK_CLOSE):
            extra = ["-H", "Connection: close"] if attack == WRK_CLOSE else []
            wrk = self.topo.spawn(ns, ["wrk", "-t1", f"-c{WRK_CONNECTIONS}",
                                       f"-d{wrk_seconds(lasting)}s", *extra, WRK_URL],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            time.sleep(s.ramp_s)
            victim = self.crawl(victim_ns)
            out = wrk.communicate(timeout=wrk_seconds(lasting) + TOOL_GRACE_S)[0]
            return victim, wrk_summary(out)
        if attack == FORGED:
            forger = Tool(self.topo, self.forger.ns, "crawl", ["--seconds", str(lasting)])
            victim = self.crawl(victim_ns)
            forger.result(lasting + TOOL_GRACE_S)
            status, body = self.hv.curl(self.forger.ns, "/latest/meta-data/instance-id")
            leaked = status == 200 and body == "i-victim"
            return victim, "read the victim's data" if leaked else f"got {status}, nothing"
        tool = Tool(self.topo, ns, "flood", ["--frames", str(10 ** 9), "--seconds",
                                             str(lasting)])
        tool.wait_for(FLOOD_SENDING, TOOL_GRACE_S)  # building its frames takes seconds
        time.sleep(s.ramp_s)
        victim = self.crawl(self.fresh[0].ns)  # never asked before, on the other bridge
        got = tool.result(lasting + TOOL_GRACE_S)
        return victim, f"{got['sent']:,} frames ({got['frames_per_s']:,}/s)"

    def unread(self, lasting: float) -> tuple[dict, str]:
        """Pipelined requests for the attacker's user-data, never read; the daemon's
        resident memory is measured before, after the ramp and after the crawl (the
        connections are still held then). From the attacker's own address: its record
        (and 16 KiB user-data) answers that one."""
        s = self.s
        pid = serving_pid(self.daemon)
        before = rss_bytes(pid)
        tool = Tool(self.topo, self.attacker.ns, "connflood",
                    ["--style", "unread", "--count", str(s.unread_connections),
                     "--pipeline", str(UNREAD_PIPELINE), "--seconds", str(lasting + 1.0)])
        time.sleep(s.ramp_s)
        peak = rss_bytes(pid)
        victim = self.crawl(self.victim.ns)
        peak = max(peak, rss_bytes(pid))
        got = tool.result(lasting + 1.0 + TOOL_GRACE_S)
        return victim, (f"{got['established']:,} connections held, daemon RSS "
                        f"+{max(0, peak - before) / (1 << 20):.0f} MiB")

    def one_config(self, protections: str, extra: list[str]) -> list[Row]:
        self.daemon = start_limited_daemon(self.hv, BRIDGES, self.store, extra)
        rows = []
        try:
            self.hv.curl(self.victim.ns, "/latest/meta-data/instance-id")  # victim asks first
            for attack in ATTACKS:
                victim, attacker = self.attack(attack)
                rows.append(Row(attack, protections, victim["requests"], victim["failures"],
                                victim["p50_ms"], victim["p99_ms"], attacker))
                self.say(f"hostile {protections:8} {attack:22} victim {victim['requests']} "
                         f"requests, {victim['failures']} failed, p99 {victim['p99_ms']:.1f} "
                         f"ms; attacker {attacker}")
        finally:
            self.daemon.stop()
            self.daemon = None
        return rows

    def execute(self, store: str) -> dict:
        started = time.monotonic()
        off_argv, missing = known_flags(PROTECTIONS_OFF)
        try:
            self.build(store)
            rows = []
            for protections in self.s.protections:
                rows += self.one_config(protections, off_argv if protections == OFF else [])
        finally:
            if self.daemon is not None:
                self.daemon.stop()
            self.topo.close()
        return {"settings": asdict(self.s), "rows": [asdict(r) for r in rows],
                "off_flags": off_argv, "off_flags_missing": missing,
                "elapsed_s": round(time.monotonic() - started, 1)}


def wrk_seconds(seconds: float) -> int:
    """wrk's -d in whole seconds (it refuses "2.5s" with its usage text and does nothing)."""
    return max(1, math.ceil(seconds))


def wrk_summary(out: str) -> str:
    """The attacker's rate and refusals; an attack that did not run is an error, never a
    row of victim figures measured without it."""
    rate = next((line.split()[-1] for line in out.splitlines()
                 if line.startswith("Requests/sec")), None)
    if rate is None:
        first = out.strip().splitlines()[0] if out.strip() else "no output"
        raise RuntimeError(f"the wrk attack did not run: {first}")
    refused = next((line.split()[-1] for line in out.splitlines() if "Non-2xx" in line), "0")
    return f"{rate} req/s, {refused} refused"


def run(settings: HostileSettings, progress: Progress, netns_prefix: str | None = None) -> dict:
    """The whole section, with its own namespaces and a small store of its own."""
    workdir = Path(tempfile.mkdtemp(prefix="tmd-hostile-"))
    try:
        return HostileRun(settings, progress, netns_prefix).execute(str(workdir / "s.db"))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def markdown(result: dict) -> str:
    s = result["settings"]
    lines = [
        f"Hostile neighbour (one guest attacks, another crawls like cloud-init for "
        f"{s['crawl_s']:g} s per attack; daemon started with soft RLIMIT_NOFILE 1024; "
        f"connection floods up to {s['connections']:,} connections; section "
        f"{result['elapsed_s']:g} s):",
        "",
        "| attack | protections | victim requests | failures | p50 ms | p99 ms "
        "| attacker got |",
        "|---|---|--:|--:|--:|--:|---|",
    ]
    for r in result["rows"]:
        lines.append(f"| {r['attack']} | {r['protections']} | {r['requests']:,} "
                     f"| {r['failures']:,} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
                     f"| {r['attacker']} |")
    if any(r["protections"] == OFF for r in result["rows"]):  # the footer of those rows
        lines.append("")
        lines.append("Protections off: `" + (" ".join(result["off_flags"]) or "(none known)")
                     + "`" + (f"; not in this daemon yet: {', '.join(result['off_flags_missing'])}"
                              if result["off_flags_missing"] else ""))
    return "\n".join(lines) + "\n"
