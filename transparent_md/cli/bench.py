"""`transparent-md bench`: build a benchmark hypervisor in namespaces, load it, report."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys

from transparent_md.cli.lab_extra import require_lab_extra
from transparent_md.errors import UserError
from transparent_md.names import DEFAULT_NETNS_PREFIX, NETNS_PREFIX_ENV

# --quick: enough to prove every section works, small enough for the test suite.
QUICK_GUESTS = 2
QUICK_DURATION_S = 1.0
QUICK_STORM_GUESTS = 20
QUICK_ROUNDS = 1
QUICK_SYSCALL_REQUESTS = 200
# Servers each round loads, in each connection mode: one wrk run and one report row
# each (lab.bench.runner's targets; the quick bench test checks the report has as many).
LOADED_SERVERS = 9  # the tc path over IPv4 and IPv6, the raw path, and six others
CONNECTION_MODES = 2
LOAD_RUNS_PER_ROUND = LOADED_SERVERS * CONNECTION_MODES
# Debian package that provides each external program the run needs.
NEEDED_PROGRAMS = {"wrk": "wrk", "nginx": "nginx-light", "nft": "nftables", "curl": "curl",
                   "ip": "iproute2", "strace": "strace", "nstat": "iproute2"}

DESCRIPTION = """\
Measure what a metadata request costs. Builds its own hypervisor in network
namespaces (named <prefix><random>-<role>, see --netns-prefix), starts
`transparent-md run` on it, loads it and the usual alternatives with the same wrk
load, drives a boot storm, and prints a markdown report with each figure beside its
target. Everything it built is removed afterwards, also on failure or Ctrl-C. Needs
root and the lab (a clone's ./scripts/setup installs it); nothing outside its own
namespaces is touched."""

EPILOG = """\
what is measured (all in one run, so ratios hold on a noisy machine):
  transparent-md, tc path   wrk in every guest at once -> 169.254.169.254 via the
                            tc program on the guests' bridge ports -> the daemon
  transparent-md, loopback  the same Responder code and store on 127.0.0.1 in the
                            hypervisor namespace (identity from a fixed table):
                            the tc path's cost is the difference
  transparent-md, nft DNAT  routed guests; the router namespace DNATs
                            169.254.169.254:80 to the same Responder (classic)
  nginx on the bridge       one worker, `return 200`, in a router-like namespace on
                            the guests' bridges: the same guests over the same ports,
                            what the tc path's CPU is held against
  uvloop + httptools floor  beside nginx on the bridge: parse, answer a fixed body,
                            nothing else (the least a responder on our stack costs)
  nginx (fixed body)        one worker, `return 200`, over loopback: native ceiling
  aiohttp (fixed body)      a plain aiohttp app over loopback: the usual Python choice
  each in two modes: keep-alive, and `Connection: close` (a new connection per
  request), in --rounds interleaved rounds (each row: the round with the median CPU).
  Per server: requests/s, latency p50/p99 (p99 = worst client's), errors,
  server CPU us/request (utime+stime from /proc over the run), peak RSS (VmHWM).
  system calls              strace -c on the daemon and on nginx on the bridge while
                            one wrk makes a fixed number of requests: per request,
                            per call (a new-connection request is one connection)
  boot storm                M guests start within --storm-window S, each making cloud-init's
                            requests (token PUT, version probes, user-data, the
                            meta-data crawl, identity document), one connection per
                            request, from --storm-drivers processes: failures,
                            p50/p99, time until the last guest is done, failures by
                            cause, the responder namespace's accept-queue overflows
                            (nstat), the drivers' own CPU and how busy the CPUs were
  memory                    the daemon's RSS while holding --records instances
  transparent-md, raw path  then the daemon again with `run --datapath raw` (packet
                            sockets and an nftables table, no BPF) on the same guests:
                            its rows in both modes, held against the same nginx
                            rounds, and its own boot storm (--no-raw skips it)

examples:
  transparent-md bench
  transparent-md bench --quick
  transparent-md bench --guests 16 --duration 10 --json bench.json --chart bench.png
  transparent-md bench --storm-guests 1000 --storm-window 10
  transparent-md bench --storm-only raw --storm-guests 1000 --storm-window 10
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="benchmark the daemon against loopback, nft DNAT, nginx and aiohttp",
        description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--guests", type=int, metavar="N",
                   help="guests loading each server, one wrk each (default 8)")
    p.add_argument("--duration", type=float, metavar="S",
                   help=f"seconds per wrk run; each round makes {LOAD_RUNS_PER_ROUND} runs "
                   f"({LOADED_SERVERS} servers x {CONNECTION_MODES} connection modes, "
                   "one report row each) (default 5)")
    p.add_argument("--storm-guests", type=int, metavar="M",
                   help="guests in the boot storm, 0 to skip it (default 200)")
    p.add_argument("--storm-window", type=float, metavar="S",
                   help="seconds over which the storm's guests start, evenly spread "
                   "(default 1: a rack powered on at once)")
    p.add_argument("--storm-drivers", type=int, metavar="N",
                   help="processes that play the storm's guests between them, each over "
                   "the whole window (default: one per CPU)")
    p.add_argument("--rounds", type=int, metavar="R",
                   help="interleaved load rounds; each row reports the median round "
                   "(default 3)")
    p.add_argument("--syscall-requests", type=int, metavar="N",
                   help="requests per strace-counted run, 0 to skip counting "
                   "(default 2000)")
    p.add_argument("--records", type=int, metavar="K",
                   help="instance records the daemon holds (default 10000)")
    p.add_argument("--quick", action="store_true",
                   help=f"{QUICK_GUESTS} guests, {QUICK_DURATION_S:g} s per run, a storm of "
                   f"{QUICK_STORM_GUESTS}: a smoke test whose figures are indicative only; "
                   "the report judges no target")
    p.add_argument("--workers", type=int, metavar="N",
                   help="responder processes of the daemon under test (`run --workers`, "
                   "default 1); its CPU and memory figures cover all of them")
    p.add_argument("--no-raw", action="store_true",
                   help="skip the raw-socket datapath's rows and storm (by default the "
                   "daemon is restarted with --datapath raw after the tc rows and "
                   "measured again on the same guests)")
    p.add_argument("--hostile", action="store_true",
                   help="only the hostile-neighbour table, longer: 6 s per attack, up to "
                   "20,000 connections per flood (the default run includes a short one)")
    p.add_argument("--storm-only", choices=("tc", "raw"), metavar="DATAPATH",
                   help="only the boot storm, against the daemon on this datapath (tc or "
                   "raw): builds just the storm guests and prints the storm's figures "
                   "as JSON (failures by cause, p99, CPU per request)")
    p.add_argument("--markdown", metavar="PATH",
                   help="write the report here as a whole document, with a header saying "
                   "what is measured and how to run it again (default: print the report); "
                   "docs/benchmark.md is this document of a default run")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON ('-': stdout)")
    p.add_argument("--chart", metavar="PATH",
                   help="write a PNG of requests/s and CPU per request side by side")
    p.add_argument("--netns-prefix", metavar="PREFIX",
                   help=f"start of every namespace name it creates, before a random part "
                   f"(default: ${NETNS_PREFIX_ENV}, else {DEFAULT_NETNS_PREFIX!r})")
    p.set_defaults(handler=bench_command)


def settings_from(args: argparse.Namespace):
    from transparent_md.lab.bench import hostile
    from transparent_md.lab.bench.runner import Settings
    from transparent_md.lab.netns import netns_prefix

    base = (Settings(guests=QUICK_GUESTS, duration_s=QUICK_DURATION_S,
                     storm_guests=QUICK_STORM_GUESTS, neighbour_attacks=hostile.QUICK,
                     rounds=QUICK_ROUNDS, syscall_requests=QUICK_SYSCALL_REQUESTS,
                     indicative=True)
            if args.quick else Settings())
    chosen = {k: v for k, v in (("guests", args.guests), ("duration_s", args.duration),
                                ("storm_guests", args.storm_guests),
                                ("storm_window_s", args.storm_window),
                                ("storm_drivers", args.storm_drivers),
                                ("rounds", args.rounds),
                                ("syscall_requests", args.syscall_requests),
                                ("records", args.records), ("workers", args.workers))
              if v is not None}
    try:
        chosen["netns_prefix"] = netns_prefix(args.netns_prefix)
    except ValueError as exc:
        raise UserError(f"--netns-prefix: {exc}") from exc
    if args.no_raw:
        chosen["raw_datapath"] = False
    s = Settings(**{**base.__dict__, **chosen})
    if (s.guests < 1 or s.duration_s <= 0 or s.storm_guests < 0 or s.records < 0
            or s.workers < 1 or s.rounds < 1 or s.storm_window_s < 0
            or s.syscall_requests < 0 or s.storm_drivers < 1):
        raise UserError("--guests, --workers, --rounds and --storm-drivers must be >= 1, "
                        "--duration > 0, --storm-guests, --storm-window, "
                        "--syscall-requests and --records >= 0")
    return s


def preflight() -> None:
    if os.geteuid() != 0:
        raise UserError("bench builds network namespaces: run it as root")
    missing = [f"{prog} (apt install {pkg})" for prog, pkg in NEEDED_PROGRAMS.items()
               if shutil.which(prog) is None]
    if missing:
        raise UserError("missing programs: " + ", ".join(missing))


def _interrupt(_sig, _frame) -> None:
    raise KeyboardInterrupt  # unwinds through the run's `finally`: namespaces go away


def _progress(line: str) -> None:
    print(f"bench: {line}", file=sys.stderr, flush=True)


def hostile_only(args: argparse.Namespace, settings, say) -> int:
    """`bench --hostile`: the hostile-neighbour table alone, with the long settings."""
    from transparent_md.lab.bench import hostile

    result = hostile.run(hostile.QUICK if args.quick else hostile.LONG, say,
                         settings.netns_prefix)
    text = hostile.markdown(result)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)
    else:
        print(text, flush=True)
    if args.json:
        data = json.dumps({"hostile": result}, indent=2)
        if args.json == "-":
            print(data)
        else:
            with open(args.json, "w") as f:
                f.write(data + "\n")
    return 0


def bench_command(args: argparse.Namespace) -> int:
    # First: everything under lab.bench may import the extra's modules.
    require_lab_extra("bench")
    from transparent_md.lab.bench import chart, report
    from transparent_md.lab.bench.runner import BenchRun

    settings = settings_from(args)
    preflight()
    signal.signal(signal.SIGTERM, _interrupt)
    if args.hostile:
        return hostile_only(args, settings, _progress)
    if args.storm_only:
        print(json.dumps(BenchRun(settings, _progress).storm_only(args.storm_only),
                         indent=2), flush=True)
        return 0
    raw = BenchRun(settings, _progress).execute()
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(report.document(raw, EPILOG.split("\nexamples:", 1)[0]))
    else:
        print(report.markdown(raw), flush=True)
    if args.json:
        data = json.dumps(report.to_json(raw), indent=2)
        if args.json == "-":
            print(data)
        else:
            with open(args.json, "w") as f:
                f.write(data + "\n")
    if args.chart:
        m = raw["machine"]
        chart.draw(raw["loads"], args.chart,
                   f"transparent-md bench {raw['started']}: {m['cpus']} CPUs, "
                   f"kernel {m['kernel']}"
                   + (" (indicative: bench --quick)" if report.indicative(raw) else ""),
                   targets=not report.indicative(raw))
    return 0
