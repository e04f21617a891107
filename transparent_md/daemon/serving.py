"""One serving process: open the store, the listening socket and the resolver, serve.

The daemon serves in its own process; with `run --workers N` the other N-1 processes
run the same code (see `daemon.workers`). Every process binds 169.254.169.254:80 in the
responder namespace (SO_REUSEPORT when there are several), reads identities from the
same pinned maps and answers from the same store with the same IMDSv2 token secret.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

READY_LINE = "transparent-md: ready"
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
    parent_pid: int = 0  # a worker dies with this process (the daemon)


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
