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

READY_LINE = "transparent-md: ready"
WORKER_READY_LINE = "transparent-md worker: ready"
PR_SET_PDEATHSIG = 1


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


def serve(spec: ServeSpec, *, ready_line: str,
          on_responder: Callable[[object], None] | None = None) -> None:
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
        uvloop.run(serve_until_signal(responder, sock, ready_line))
    finally:
        resolver.close()
        sock.close()
        store.close()


async def serve_until_signal(responder, sock, ready_line: str) -> None:
    """Serve `sock` until SIGTERM or SIGINT; print `ready_line` once listening."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await responder.start(sock)
    print(ready_line, flush=True)
    await stop.wait()
    server.close()
    responder.close()


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
    serve(spec, ready_line=WORKER_READY_LINE)
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
