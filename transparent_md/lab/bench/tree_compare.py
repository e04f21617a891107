"""Two source trees of the daemon, interleaved, against nginx and the floor on the bridge.

For a change to the responder's hot path: the same guests load, through the tc path,
the daemon as built from tree A and from tree B (each started from its own source
directory with this interpreter), and nginx and the uvloop + httptools floor in the
router namespace on the same bridges; every round measures each in both connection
modes, in the same order (a shared machine swings ~10 % a round). The report gives
every round's CPU per request and each tree's ratio to nginx per round and median.
Run as `scripts/bench-compare TREE_A TREE_B [--guests N] [--duration S] [--rounds R]`
(a tree is a checkout's top directory, e.g. a `git worktree` of the commit before).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from transparent_md.datapath.responder_side import METADATA_IP
from transparent_md.lab.bench import records, servers, topology, wrk
from transparent_md.lab.bench.measure import MODES, Target, measure
from transparent_md.lab.bench.runner import (
    LOAD_GENERATOR_FLAGS,
    ROUTER_FLOOR_PORT,
    ROUTER_NGINX_PORT,
    router_urls,
)
from transparent_md.lab.netns import Topology

NGINX, FLOOR = "nginx on the bridge", "floor on the bridge"


def tree_env(tree: Path) -> dict[str, str]:
    """The daemon imports `transparent_md` from `tree` (ahead of the installed one; the
    working directory, which `python -m` puts first, holds no package: see main)."""
    return {"PYTHONPATH": str(tree)}


def check_imports_from(tree: Path) -> None:
    found = subprocess.run([sys.executable, "-c",
                            "import transparent_md; print(transparent_md.__file__)"],
                           env={**os.environ, **tree_env(tree)}, capture_output=True,
                           text=True, check=True).stdout.strip()
    if not Path(found).is_relative_to(tree):
        raise RuntimeError(f"{tree}: the daemon would import {found}")


def daemon_rounds(hv, guests, tree: Path, store: str, hook: Path, duration_s: float,
                  round_: int) -> dict[str, float]:
    """Both modes against the daemon built from `tree`: CPU us per request by mode."""
    daemon = hv.start_daemon(topology.BRIDGES, store, list(LOAD_GENERATOR_FLAGS),
                             env=tree_env(tree))
    try:
        target = Target("tc", f"daemon {tree.name}", daemon.proc.pid,
                        f"http://{METADATA_IP}{records.WRK_PATH}",
                        tuple(g.ns for g in guests), True)
        return {mode: _checked(measure(target, mode, duration_s, hook, round_))
                for mode in MODES}
    finally:
        daemon.stop()


ERRORS: list[str] = []


def _checked(m) -> float:
    """CPU us per request; a run that had errors is kept and said (in the report)."""
    if not m.load.requests:
        raise RuntimeError(f"{m.target.label} {m.mode}: no request answered")
    if m.load.errors:
        ERRORS.append(f"round {m.round + 1} {m.target.label} {m.mode}: {m.load.errors} "
                      f"errors in {m.load.requests} requests")
        print(ERRORS[-1], file=sys.stderr, flush=True)
    return round(m.cpu_us_per_request, 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs=2, type=Path, metavar="TREE")
    parser.add_argument("--guests", type=int, default=4)
    parser.add_argument("--duration", type=float, default=4.0, metavar="S")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--records", type=int, default=1000)
    args = parser.parse_args(argv)
    trees = [t.resolve() for t in args.trees]
    for tree in trees:
        if not (tree / "transparent_md" / "__init__.py").is_file():
            parser.error(f"{tree}: no transparent_md package there")
    names = [f"A {trees[0].name}", f"B {trees[1].name}"]
    if names[0][2:] == names[1][2:]:
        names = ["A", "B"]
    workdir = Path(tempfile.mkdtemp(prefix="tmd-compare-"))
    os.chdir(workdir)  # `python -m` puts the working directory first on sys.path
    for tree in trees:
        check_imports_from(tree)
    cpu: dict[str, dict[str, list[float]]] = {n: {m: [] for m in MODES}
                                              for n in (*names, NGINX, FLOOR)}
    try:
        with Topology() as topo:
            hv = topology.build_hypervisor(topo)
            guests = topology.add_guests(hv, "g", args.guests)
            store = str(workdir / "instances.db")
            records.write_store(store, guests, args.records)
            hook = wrk.write_hook(workdir)
            router_ns = topology.build_router(hv)
            (workdir / "nginx").mkdir()
            nginx = servers.start_nginx(topo, router_ns, "0.0.0.0", ROUTER_NGINX_PORT,
                                        records.FIXED_BODY, workdir / "nginx")
            floor = servers.start_floor(topo, router_ns, "0.0.0.0", ROUTER_FLOOR_PORT,
                                        records.FIXED_BODY)
            fixed = {}
            for name, server, port in ((NGINX, nginx, ROUTER_NGINX_PORT),
                                       (FLOOR, floor, ROUTER_FLOOR_PORT)):
                urls = router_urls(guests, port, records.WRK_PATH)
                fixed[name] = Target(name, name, server.pid, urls[0],
                                     tuple(g.ns for g in guests), False, urls)
            for round_ in range(args.rounds):
                for name, tree in zip(names, trees, strict=True):
                    for mode, value in daemon_rounds(hv, guests, tree, store, hook,
                                                     args.duration, round_).items():
                        cpu[name][mode].append(value)
                for name, target in fixed.items():
                    for mode in MODES:
                        cpu[name][mode].append(
                            _checked(measure(target, mode, args.duration, hook, round_)))
                print(f"round {round_ + 1}: " + json.dumps(
                    {n: {m: v[-1] for m, v in by_mode.items()} for n, by_mode in cpu.items()}),
                    file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(report(cpu, names, args.rounds))
    print(json.dumps({"trees": [str(t) for t in trees], "cpu_us_per_request": cpu}),
          file=sys.stderr)
    return 0


def report(cpu: dict[str, dict[str, list[float]]], names: list[str], rounds: int) -> str:
    lines = [f"Server CPU us per request, {rounds} interleaved rounds (each round: "
             f"{', '.join(cpu)}; both modes each):", "",
             "| server | mode | rounds | median | / nginx per round | / nginx median |",
             "|---|---|---|--:|---|--:|"]
    for name, by_mode in cpu.items():
        for mode in MODES:
            values = by_mode[mode]
            ratios = [v / n for v, n in zip(values, cpu[NGINX][mode], strict=True)]
            lines.append(f"| {name} | {mode} | {', '.join(f'{v:.1f}' for v in values)} "
                         f"| {statistics.median(values):.1f} "
                         f"| {', '.join(f'{r:.2f}' for r in ratios)} "
                         f"| {statistics.median(ratios):.2f} |")
    for mode in MODES:
        per_round = [b / a for a, b in zip(cpu[names[0]][mode], cpu[names[1]][mode],
                                           strict=True)]
        lines.append(f"\n{mode}: {names[1]} / {names[0]} per round "
                     f"{', '.join(f'{r:.2f}' for r in per_round)}, median "
                     f"{statistics.median(per_round):.2f}")
    if ERRORS:
        lines += ["", "Runs with errors (wrk's socket errors or non-200 answers):", *ERRORS]
    return "\n".join(lines)


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("bench-compare builds network namespaces: run it as root")
    sys.exit(main())
