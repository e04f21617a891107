"""Extra responder processes for `run --workers N`.

Each worker binds 169.254.169.254:80 in the responder namespace with SO_REUSEPORT, so
the kernel spreads new connections over the daemon and its workers. A worker gets its
`ServeSpec` as JSON on stdin, prints WORKER_READY_LINE once listening, and dies with
the daemon (PR_SET_PDEATHSIG), so a killed daemon never leaves workers behind.
Run as `python -m transparent_md.daemon.workers`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict

from transparent_md.daemon.serving import ServeSpec, serve
from transparent_md.errors import UserError
from transparent_md.process import die_with_parent, stop_process

WORKER_READY_LINE = "transparent-md worker: ready"


def spawn_worker(spec: ServeSpec) -> subprocess.Popen:
    """Start one worker process; the caller waits for WORKER_READY_LINE on its stdout."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "transparent_md.daemon.workers"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    proc.stdin.write(json.dumps(asdict(spec)))
    proc.stdin.close()
    return proc


def start_workers(spec: ServeSpec, count: int) -> list[subprocess.Popen]:
    """`count` serving processes; returns once each one listens, or stops them all."""
    workers: list[subprocess.Popen] = []
    for _ in range(count):
        proc = spawn_worker(spec)
        workers.append(proc)
        line = proc.stdout.readline().strip()
        if line != WORKER_READY_LINE:
            for started in workers:
                stop_process(started)
            raise UserError(f"a responder worker failed to start (exit {proc.wait()})")
    return workers


def worker_main() -> int:
    spec = ServeSpec.from_json(sys.stdin.read())
    die_with_parent(spec.parent_pid)
    stats_path = f"{spec.stats_dir}/{os.getpid()}.json" if spec.stats_dir else None
    serve(spec, ready_line=WORKER_READY_LINE, stats_path=stats_path)
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
