"""Serving the responder socket: in the daemon's own process and in worker processes.

With `run --workers N`, N processes each bind 169.254.169.254:80 in the responder
namespace with SO_REUSEPORT, so the kernel spreads new connections over them. They
share one IMDSv2 token secret (a token works on any connection), read identities from
the same pinned maps and answer from the same store file. A worker dies with its
parent (PR_SET_PDEATHSIG), so a killed daemon never leaves workers behind.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

READY_LINE = "transparent-md: ready"
WORKER_READY_LINE = "transparent-md worker: ready"
PR_SET_PDEATHSIG = 1
# How stale a worker's counts in --metrics may be.
STATS_INTERVAL_S = 1.0


@dataclass(frozen=True)
class ServeSpec:
    """Everything a serving process needs; travels to workers as JSON on stdin."""

    netns_name: str | None
    pin_dir: str
    shadow_prefix: str
    store_path: str | None
    token_hop_limit: int
    token_secret_hex: str
    reuse_port: bool
    stats_dir: str | None = None  # where workers leave their counts for --metrics


def serve(spec: ServeSpec, *, ready_line: str,
          on_responder: Callable[[object], None] | None = None,
          stats_path: str | None = None) -> None:
    """Serve on uvloop until SIGTERM or SIGINT; print `ready_line` once listening."""
    import uvloop

    from transparent_md.datapath.responder_side import listening_socket
    from transparent_md.identity.shadow_map import ShadowResolver
    from transparent_md.responder.server import Responder
    from transparent_md.store import open_store

    store = open_store(spec.store_path)
    sock = listening_socket(spec.netns_name, reuse_port=spec.reuse_port)
    resolver = ShadowResolver(spec.pin_dir, spec.shadow_prefix)
    responder = Responder(store, resolver, token_hop_limit=spec.token_hop_limit,
                          token_secret=bytes.fromhex(spec.token_secret_hex))
    if on_responder:
        on_responder(responder)

    try:
        uvloop.run(serve_until_signal(responder, sock, ready_line, stats_path))
    finally:
        resolver.close()
        sock.close()
        store.close()


async def serve_until_signal(responder, sock, ready_line: str,
                             stats_path: str | None = None) -> None:
    """Serve `sock` until SIGTERM or SIGINT; print `ready_line` once listening.

    With `stats_path`, the responder's counts are written there every second, for the
    daemon's --metrics to add in.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await responder.start(sock)
    if stats_path:
        _write_stats_every_second(loop, responder, stats_path)
    print(ready_line, flush=True)
    await stop.wait()
    server.close()
    responder.close()


def _write_stats_every_second(loop: asyncio.AbstractEventLoop, responder, path: str) -> None:
    def write() -> None:
        with open(path + ".tmp", "w") as handle:
            json.dump(responder.stats.as_dict(), handle)
        os.replace(path + ".tmp", path)  # a reader sees the old or the new counts
        loop.call_later(STATS_INTERVAL_S, write)

    write()


def worker_stats(stats_dir: str) -> list[dict]:
    """The latest counts every worker left in `stats_dir`."""
    counts = []
    for path in Path(stats_dir).glob("*.json"):
        try:
            counts.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue  # a worker that is just starting or gone
    return counts


def spawn_worker(spec: ServeSpec) -> subprocess.Popen:
    """Start one worker process; the caller waits for WORKER_READY_LINE on its stdout."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "transparent_md.cli.serving"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    proc.stdin.write(json.dumps(asdict(spec)))
    proc.stdin.close()
    return proc


def _die_with_parent() -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:  # the parent died before prctl took effect
        sys.exit(1)


def worker_main() -> int:
    _die_with_parent()
    spec = ServeSpec(**json.loads(sys.stdin.read()))
    stats_path = f"{spec.stats_dir}/{os.getpid()}.json" if spec.stats_dir else None
    serve(spec, ready_line=WORKER_READY_LINE, stats_path=stats_path)
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
