"""What `run --access-log` costs: daemon CPU per request with and without it.

The same guests load the same daemon configuration through the tc path, once without
and once with the access log, in interleaved rounds (a shared machine swings ~10 % a
round); the report gives each round's CPU per request and the median ratio. The log
goes to the daemon's stderr, read by the lab like journald would.
Run as `scripts/bench-access-log [--guests N] [--duration S] [--rounds R]`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from transparent_md.lab.bench import records, topology, wrk
from transparent_md.lab.bench.procstat import CpuWindow
from transparent_md.lab.bench.runner import LOAD_GENERATOR_FLAGS
from transparent_md.lab.netns import Topology

METADATA_URL = f"http://169.254.169.254{records.WRK_PATH}"
MODES = {"keep-alive": False, "new connection": True}


def measure(hv, guests, extra: list[str], store: str, hook: Path, duration_s: float,
            close: bool) -> dict:
    daemon = hv.start_daemon(topology.BRIDGES, store, [*LOAD_GENERATOR_FLAGS, *extra])
    try:
        window = CpuWindow(daemon.proc.pid)
        window.start()
        load = wrk.run_clients([g.ns for g in guests], [METADATA_URL] * len(guests),
                               duration_s, hook, close)
        cpu_s = window.stop()
    finally:
        daemon.stop()
    return {"requests": load.requests, "errors": load.errors, "rps": round(load.rps),
            "cpu_us_per_request": round(cpu_s * 1e6 / max(load.requests, 1), 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guests", type=int, default=4)
    parser.add_argument("--duration", type=float, default=4.0, metavar="S")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--records", type=int, default=1000)
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="tmd-accesslog-"))
    results: dict[str, dict[str, list[dict]]] = {m: {"off": [], "on": []} for m in MODES}
    try:
        with Topology() as topo:
            hv = topology.build_hypervisor(topo)
            guests = topology.add_guests(hv, "g", args.guests)
            store = str(workdir / "instances.db")
            records.write_store(store, guests, args.records)
            hook = wrk.write_hook(workdir)
            for _ in range(args.rounds):
                for mode, close in MODES.items():
                    for label, extra in (("off", []), ("on", ["--access-log"])):
                        results[mode][label].append(
                            measure(hv, guests, extra, store, hook, args.duration, close))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("| connection | access log | requests/s | errors | daemon CPU us/request |")
    print("|---|---|--:|--:|--:|")
    summary = {}
    for mode in MODES:
        for label in ("off", "on"):
            rows = results[mode][label]
            median = statistics.median(r["cpu_us_per_request"] for r in rows)
            rps = statistics.median(r["rps"] for r in rows)
            errors = sum(r["errors"] for r in rows)
            print(f"| {mode} | {label} | {rps:,.0f} | {errors} | {median:.2f} |")
        ratios = [on["cpu_us_per_request"] / off["cpu_us_per_request"]
                  for off, on in zip(results[mode]["off"], results[mode]["on"], strict=True)]
        summary[mode] = round(statistics.median(ratios), 3)
        print(f"\n{mode}: access log costs {summary[mode]:.2f}x the CPU per request "
              f"(median of {args.rounds} rounds: {', '.join(f'{r:.2f}' for r in ratios)})")
    print(json.dumps({"rounds": results, "ratio": summary}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
