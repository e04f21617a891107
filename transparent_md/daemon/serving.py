"""One serving process: open the store, the listening socket and the resolver, serve.

The daemon serves in its own process; with `run --workers N` the other N-1 processes
run the same code (see `daemon.workers`). Every process binds 169.254.169.254:80 in the
responder namespace (SO_REUSEPORT when there are several), reads identities from the
same pinned maps and answers from the same store with the same IMDSv2 token secret.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from transparent_md.responder.limits import ResponderLimits

# How long another thread of the serving process (the admin API's, the store loader's)
# may keep the GIL when the guests' loop asks for it. Python's default, 5 ms, is a wait
# every guest request behind a busy writer pays; a shorter slice costs those threads a
# few more switches.
GIL_SLICE_S = 0.001

log = logging.getLogger(__name__)

READY_LINE = "transparent-md: ready"
# How stale a worker's counts in --metrics may be.
STATS_INTERVAL_S = 1.0


@dataclass(frozen=True)
class ServeSpec:
    """Everything a serving process needs; travels to workers as JSON on stdin."""

    netns_name: str | None
    pin_dir: str  # the datapath's tables: BPF pins (tc) or shared files (raw)
    shadow_prefix: str
    store_path: str | None
    token_hop_limit: int
    token_secret_hex: str
    reuse_port: bool
    stats_dir: str | None = None  # where workers leave their counts for --metrics
    parent_pid: int = 0  # a worker dies with this process (the daemon)
    # A fleet store (`EtcdTarget.as_dict()`): store_path is then its local cache, and a
    # guest's posted password is written through to etcd (store_source).
    fleet_target: dict | None = None
    limits: ResponderLimits = field(default_factory=ResponderLimits)
    access_log: str | None = None  # the --log-format of --access-log lines, or None

    @classmethod
    def from_json(cls, text: str) -> ServeSpec:
        """The spec a worker reads (written as `json.dumps(asdict(spec))`)."""
        fields = json.loads(text)
        return cls(**{**fields, "limits": ResponderLimits(**fields["limits"])})


@dataclass
class ServeHooks:
    """What the daemon's own serving loop does besides serving (workers use none)."""

    on_ready: Callable[[], None] | None = None       # listening: tell systemd
    on_reload: Callable[[], None] | None = None      # SIGHUP
    on_stopping: Callable[[], None] | None = None    # SIGTERM/SIGINT received
    on_tick: Callable[[], None] | None = None        # every tick_s (systemd's watchdog)
    tick_s: float | None = None


def serve(spec: ServeSpec, *, ready_line: str,
          on_responder: Callable[[object], None] | None = None,
          stats_path: str | None = None, hooks: ServeHooks | None = None) -> None:
    """Serve on uvloop until SIGTERM or SIGINT; print `ready_line` once listening."""
    import uvloop

    from transparent_md.daemon.store_source import open_serving_store
    from transparent_md.datapath.responder_side import listening_socket
    from transparent_md.identity.shadow_map import ShadowResolver
    from transparent_md.responder.access_log import AccessLog
    from transparent_md.responder.server import Responder

    sys.setswitchinterval(GIL_SLICE_S)
    store = open_serving_store(spec.store_path, spec.fleet_target)
    sock = listening_socket(spec.netns_name, reuse_port=spec.reuse_port)
    resolver = ShadowResolver(spec.pin_dir, spec.shadow_prefix)
    responder = Responder(store, resolver, token_hop_limit=spec.token_hop_limit,
                          token_secret=bytes.fromhex(spec.token_secret_hex),
                          limits=spec.limits,
                          access_log=(AccessLog(json_lines=spec.access_log == "json")
                                      if spec.access_log else None))
    if on_responder:
        on_responder(responder)

    try:
        uvloop.run(serve_until_signal(responder, sock, ready_line, stats_path, hooks))
    finally:
        resolver.close()
        sock.close()
        store.close()


async def serve_until_signal(responder, sock, ready_line: str,
                             stats_path: str | None = None,
                             hooks: ServeHooks | None = None) -> None:
    """Serve `sock` until SIGTERM or SIGINT; print `ready_line` once listening.

    With `stats_path`, the responder's counts are written there every second, for the
    daemon's --metrics to add in. SIGHUP runs `hooks.on_reload` (a worker ignores it:
    the daemon reloads what workers share).
    """
    hooks = hooks or ServeHooks()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _reloader(hooks.on_reload))
    server = await responder.start(sock)
    if stats_path:
        _write_stats_every_second(loop, responder, stats_path)
    if hooks.on_tick and hooks.tick_s:
        _every(loop, hooks.tick_s, hooks.on_tick)
    print(ready_line, flush=True)
    if hooks.on_ready:
        hooks.on_ready()
    await stop.wait()
    if hooks.on_stopping:
        hooks.on_stopping()
    server.close()
    responder.close()


def _reloader(on_reload: Callable[[], None] | None) -> Callable[[], None]:
    def reload() -> None:
        if on_reload is None:
            return
        try:
            on_reload()
        except Exception:  # a bad reload keeps the running configuration
            log.exception("reload failed; still serving with the previous configuration")

    return reload


def _every(loop: asyncio.AbstractEventLoop, interval_s: float,
           action: Callable[[], None]) -> None:
    def tick() -> None:
        action()
        loop.call_later(interval_s, tick)

    tick()


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
