"""The run's results as checks against the targets, JSON, and a markdown report."""

from __future__ import annotations

from collections.abc import Callable

from transparent_md.lab.bench import hostile
from transparent_md.lab.bench import targets as tg
from transparent_md.lab.bench.measure import (
    KEEP_ALIVE,
    NEW_CONNECTION,
    Measurement,
    cpu_ratios,
    median,
)
from transparent_md.lab.bench.targets import Check

# The nginx row the tc path is held against: same guests, same bridge, same ports.
NGINX_ON_BRIDGE = "nginx-router"
# uvloop + httptools answering a fixed body beside it: the floor under our responder.
FLOOR_ON_BRIDGE = "floor-router"
# What its row says per mode: a new connection on uvloop's transports costs more system
# calls than the daemon's own accept path, so there it is no floor.
FLOOR_MEANING = {KEEP_ALIVE: "the least any responder on this stack costs",
                 NEW_CONNECTION: "uvloop's own transports, which the daemon's accept "
                                 "path bypasses"}

# The raw-socket datapath's rows (runner.RAW_KEY): shown beside tc, held to no target.
RAW_PATH = "raw"

# A storm driver, or all the host's CPUs, busier than this: processes wait for a CPU.
SATURATED = 0.9

# The CPU target per connection mode (issue 5).
CPU_TARGET = {KEEP_ALIVE: tg.CPU_US_KEEPALIVE, NEW_CONNECTION: tg.CPU_US_NEW_CONNECTION}


def _find(loads: list[Measurement], key: str, mode: str) -> Measurement | None:
    return next((m for m in loads if m.target.key == key and m.mode == mode), None)


def ratios(loads: list[Measurement]) -> dict[str, float]:
    """tc path requests/s over the same responder's loopback rate, per mode."""
    out = {}
    for mode in CPU_TARGET:
        tc, lo = _find(loads, "tc", mode), _find(loads, "loopback", mode)
        if tc and lo and lo.load.rps:
            out[mode] = tc.load.rps / lo.load.rps
    return out


def nginx_ratios(raw: dict, ours: str = "tc") -> dict[str, list[float]]:
    """Per mode, `ours`'s CPU per request over nginx on the bridge, one per round."""
    rounds = raw.get("rounds") or raw["loads"]
    return {mode: r for mode in CPU_TARGET
            if (r := cpu_ratios(rounds, ours, NGINX_ON_BRIDGE, mode))}


def new_connection_syscalls(raw: dict) -> float | None:
    return next((c["per_connection"] for c in raw.get("syscalls") or ()
                 if c["server"] == "tc" and c["mode"] == NEW_CONNECTION), None)


def checks(raw: dict) -> list[Check]:
    """Every target of issues 5 and 14 with the figure this run measured for it."""
    loads: list[Measurement] = raw["loads"]
    out = []
    for mode, limit in CPU_TARGET.items():
        m = _find(loads, "tc", mode)
        if m:
            out.append(Check(f"CPU per request, tc path, {mode}", m.cpu_us_per_request,
                             limit, False, " us"))
    for mode, values in nginx_ratios(raw).items():
        out.append(Check(f"CPU per request, tc path / nginx on the bridge, {mode} "
                         f"(median of {len(values)})", median(values),
                         tg.CPU_OVER_NGINX[mode], False, "x"))
    calls = new_connection_syscalls(raw)
    if calls is not None:
        out.append(Check("system calls per new-connection request, daemon", calls,
                         tg.SYSCALLS_PER_NEW_CONNECTION, False, ""))
    for mode, value in ratios(loads).items():
        out.append(Check(f"tc path / loopback requests/s, {mode}", value,
                         tg.TC_OVER_LOOPBACK_MIN, True, "x"))
    storm = raw.get("storm")
    if storm:
        out.append(Check(f"storm failures ({storm['guests']} guests)", storm["failures"],
                         tg.STORM_MAX_FAILURES, False, ""))
        out.append(Check(f"storm p99 per request ({storm['guests']} guests)",
                         storm["p99_ms"], tg.STORM_P99_MS, False, " ms"))
    mem = raw["memory"]
    out.append(Check(f"daemon RSS with {mem['records']:,} records", mem["rss_mib"],
                     tg.RSS_10K_RECORDS_MIB, False, " MiB"))
    return out


def indicative(raw: dict) -> bool:
    """A `--quick` run: its figures are indicative, and no target is judged."""
    return bool(raw["settings"].get("indicative"))


def to_json(raw: dict) -> dict:
    judged = not indicative(raw)
    return {
        **{k: raw[k] for k in ("machine", "settings", "namespaces", "started",
                               "elapsed_s", "storm", "memory")},
        "storm_raw": raw.get("storm_raw"),
        "raw_over_nginx_cpu": {k: [round(x, 3) for x in v]
                               for k, v in nginx_ratios(raw, RAW_PATH).items()},
        "hostile": raw.get("hostile"),
        "loads": [m.to_json() for m in raw["loads"]],
        "rounds": [m.to_json() for m in raw.get("rounds") or ()],
        "syscalls": raw.get("syscalls") or [],
        "tc_over_nginx_cpu": {k: [round(x, 3) for x in v]
                              for k, v in nginx_ratios(raw).items()},
        "floor_over_nginx_cpu": {k: [round(x, 3) for x in v]
                                 for k, v in nginx_ratios(raw, FLOOR_ON_BRIDGE).items()},
        "tc_over_loopback": {k: round(v, 3) for k, v in ratios(raw["loads"]).items()},
        "indicative": not judged,
        "checks": [{**c.to_json(), "ok": c.ok if judged else None} for c in checks(raw)],
    }


def _mark(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def _not_judged(_ok: bool) -> str:
    return "not judged"


INDICATIVE_NOTE = (
    "**Indicative figures only** (`bench --quick`: {duration:g} s per run, {rounds} "
    "round(s), a storm of {storm} guests): too short to hold a figure against a target, so "
    "none is judged. `transparent-md bench` (the default run) judges them.")


def _num(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def markdown(raw: dict) -> str:
    m, s = raw["machine"], raw["settings"]
    mark = _not_judged if indicative(raw) else _mark
    note = ([INDICATIVE_NOTE.format(duration=s["duration_s"], rounds=s.get("rounds", 1),
                                    storm=s["storm_guests"]), ""]
            if indicative(raw) else [])
    lines = [*note,
        f"Run {raw['started']} on {m['cpus']} CPUs, kernel {m['kernel']}, "
        f"Python {m['python']}"
        + (f", load average {m['load_before']:g} before it began (other work on the "
           "machine skews every figure)" if m.get("load_before", 0) >= m["cpus"] / 2
           else "")
        + f": {s['guests']} wrk clients x "
        f"{s['connections_per_guest']} connections, {s['duration_s']:g} s per run "
        f"(whole run {raw['elapsed_s']:g} s). Each row is the median of "
        f"{s.get('rounds', 1)} interleaved rounds (the round with the median CPU per request).",
        "",
        "| server | connection | requests/s | p50 ms | p99 ms | errors "
        "| server CPU us/request (target) | peak RSS MiB |",
        "|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    for x in raw["loads"]:
        cpu = _num(x.cpu_us_per_request, 1)
        if x.target.ours and x.target.key != RAW_PATH:
            limit = CPU_TARGET[x.mode]
            cpu += f" (<= {limit:g} {mark(x.cpu_us_per_request <= limit)})"
        lines.append(
            f"| {x.target.label} | {x.mode} | {_num(x.load.rps)} | {x.load.p50_ms:.2f} "
            f"| {x.load.p99_ms:.2f} | {x.load.errors} | {cpu} | {x.peak_rss_mib:.1f} |")
    lines.append("")
    for mode, value in ratios(raw["loads"]).items():
        lines.append(f"- tc path / loopback, {mode}: **{value:.2f}x** "
                     f"(>= {tg.TC_OVER_LOOPBACK_MIN:g}x {mark(value >= tg.TC_OVER_LOOPBACK_MIN)})")
    for mode, values in nginx_ratios(raw).items():
        limit = tg.CPU_OVER_NGINX[mode]
        lines.append(f"- CPU per request, tc path / nginx on the bridge, {mode}: "
                     f"**{median(values):.2f}x** median of {len(values)} rounds "
                     f"({', '.join(f'{v:.2f}' for v in values)}; <= {limit:g}x "
                     f"{mark(median(values) <= limit)})")
    for mode, values in nginx_ratios(raw, RAW_PATH).items():
        lines.append(f"- CPU per request, raw-socket path / nginx on the bridge, {mode}: "
                     f"**{median(values):.2f}x** median of {len(values)} rounds "
                     f"({', '.join(f'{v:.2f}' for v in values)}; no target: see "
                     "docs/how-it-works.md, the raw-socket datapath)")
    for mode, values in nginx_ratios(raw, FLOOR_ON_BRIDGE).items():
        lines.append(f"- CPU per request, uvloop + httptools floor / nginx on the bridge, "
                     f"{mode}: {median(values):.2f}x median of {len(values)} rounds "
                     f"({', '.join(f'{v:.2f}' for v in values)}; {FLOOR_MEANING[mode]}, "
                     f"see `lab/bench/floor_server.py`)")
    lines += syscall_lines(raw.get("syscalls") or [])
    for key, what in (("storm", "Boot storm"), ("storm_raw", "Boot storm, raw-socket path")):
        if raw.get(key):
            lines += storm_lines(raw[key], what, mark)
    mem = raw["memory"]
    lines.append(
        f"- Daemon RSS holding {mem['records']:,} instance records: **{mem['rss_mib']:.1f} MiB**"
        f" (< {tg.RSS_10K_RECORDS_MIB:g} MiB "
        f"{mark(mem['rss_mib'] <= tg.RSS_10K_RECORDS_MIB)}; peak {mem['peak_rss_mib']:.1f}); "
        f"the same Responder and records without the datapath in its process (the "
        f"loopback server): {mem['responder_only_rss_mib']:.1f} MiB")
    lines += ["", "| target | measured | goal | |", "|---|--:|---|---|"]
    for c in checks(raw):
        lines.append(f"| {c.name} | {c.value:,.2f} | {c.target_text} | {mark(c.ok)} |")
    if raw.get("hostile"):
        lines += ["", hostile.markdown(raw["hostile"])]
    return "\n".join(lines) + "\n"


def storm_lines(storm: dict, what: str, mark: Callable[[bool], str]) -> list[str]:
    """One boot storm's line and its details (`mark` judges a target, or not, in quick
    mode)."""
    lines: list[str] = []
    lines.append(
        f"- {what}: {storm['guests']} guests starting within "
        f"{storm['start_window_s']:g} s, {storm['requests']:,} requests "
        f"({storm['requests_per_guest']:.0f} per guest, a fresh connection each): "
        f"**{storm['failures']} failures** (target 0 "
        f"{mark(storm['failures'] <= tg.STORM_MAX_FAILURES)}), p50 "
        f"{storm['p50_ms']:.1f} ms, **p99 {storm['p99_ms']:.1f} ms** "
        f"(< {tg.STORM_P99_MS:g} ms {mark(storm['p99_ms'] <= tg.STORM_P99_MS)}), "
        f"max {storm['max_ms']:.1f} ms, last guest done after "
        f"{storm['last_guest_done_s']:.2f} s; daemon CPU "
        f"{storm['server_cpu_us_per_request']} us/request.")
    busy = storm.get("host_cpu_busy")
    if busy is not None:
        share = storm["driver_busiest_cpu_share"]
        lines.append(
            f"  - the {storm['drivers']} driver processes playing the guests used "
            f"{storm['driver_cpu_us_per_request']} us/request, the busiest "
            f"{share:.0%} of a CPU"
            + (" (CPU-bound: its latencies include its own queue)"
               if share >= SATURATED else "")
            + f"; all CPUs were {busy:.0%} busy during the storm"
            + (" (saturated: the latency includes waiting for a CPU)"
               if busy >= SATURATED else ""))
    causes = storm.get("failure_causes") or {}
    if causes:
        lines.append("  - failures by cause: " + ", ".join(
            f"{cause} {n}" for cause, n in sorted(causes.items(), key=lambda kv: -kv[1])))
    for example in storm["failure_examples"]:
        lines.append(f"  - failure: `{example}`")
    tcp = storm.get("responder_tcp")
    if tcp:
        lines.append("  - responder namespace TCP counters during the storm (nstat): "
                     + ", ".join(f"{k.removeprefix('TcpExt')} {v:,}"
                                 for k, v in tcp.items()))
    return lines


def syscall_lines(counts: list[dict]) -> list[str]:
    """The strace table: calls per request, total and the main calls, per server and mode."""
    if not counts:
        return []
    lines = ["", "| server | connection | requests traced | system calls per request "
             "| by call (per request) |", "|---|---|--:|--:|---|"]
    for c in counts:
        by = ", ".join(f"{name} {n:.2f}" for name, n in c["by_call"].items() if n >= 0.01)
        lines.append(f"| {c['label']} | {c['mode']} | {c['requests']:,} "
                     f"| {c['per_request']:.2f} | {by} |")
    lines.append("")
    return lines


DOCUMENT_TITLE = "# Benchmark: `transparent-md bench`"
DOCUMENT_INTRO = """\
This document is one run's report, written by `transparent-md bench --markdown
docs/benchmark.md`; regenerate it the same way (as root, with the lab extra: `scripts/setup`
makes both) rather than editing it. Earlier runs live in git's history, not here. Other
ways to run it:

```
transparent-md bench --quick           # a smoke test: indicative figures, no target judged
transparent-md bench --hostile         # only the hostile-neighbour table, longer attacks
transparent-md bench --storm-guests 3000 --storm-window 10   # a large boot storm
transparent-md bench --storm-only raw --storm-guests 1000 --storm-window 10  # one datapath's storm
transparent-md bench --json r.json --chart r.png --markdown r.md
```

What is measured (from `transparent-md bench --help`):

```
{what}```

## The run

"""


def document(raw: dict, what_is_measured: str) -> str:
    """The whole of docs/benchmark.md: a short header, then this run's report."""
    return "\n\n".join([DOCUMENT_TITLE, DOCUMENT_INTRO.format(what=what_is_measured)]
                       ).rstrip("\n") + "\n\n" + markdown(raw)
