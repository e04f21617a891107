"""The servers under test, each started in a namespace of the run and waited for.

Every server is one process (nginx: one worker), so CPU per request compares like
with like on a 2-core machine; each is stopped by PID with the rest of the topology.
"""

from __future__ import annotations

import json
import queue
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from transparent_md.datapath.responder_side import entered_netns
from transparent_md.identity.guest import Guest
from transparent_md.lab.bench import fixed_aiohttp, floor_server, static_responder
from transparent_md.lab.netns import Topology

# Python servers import uvloop/aiohttp and open the store: seconds on a loaded machine.
START_TIMEOUT_S = 30.0
# How often to retry connecting while nginx comes up.
POLL_INTERVAL_S = 0.05
# nginx recycles keep-alive connections after 1000 requests by default; the other
# servers never do, so the limit is lifted to keep the load identical.
NGINX_KEEPALIVE_REQUESTS = 10_000_000


@dataclass
class Server:
    """A started server: where the load goes (inside its namespace) and whose CPU counts."""

    name: str
    ns: str
    url: str
    proc: subprocess.Popen

    @property
    def pid(self) -> int:
        # `ip netns exec` execs the command, so the Popen PID is the server itself.
        return self.proc.pid


def _wait_line(proc: subprocess.Popen, ready: str, what: str) -> None:
    lines: queue.Queue[str | None] = queue.Queue()
    seen: list[str] = []

    def pump() -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise RuntimeError(f"{what} not ready after {START_TIMEOUT_S}s:\n{''.join(seen)}") \
                from None
        if line is None:
            raise RuntimeError(f"{what} exited ({proc.wait()}):\n{''.join(seen)}")
        seen.append(line)
        if line.strip() == ready:
            return


def wait_listening(ns: str, host: str, port: int, what: str) -> None:
    """Poll until something accepts on host:port inside `ns`."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        with entered_netns(ns):
            sock = socket.socket()
        try:
            sock.settimeout(1.0)
            sock.connect((host, port))
            return
        except OSError:
            time.sleep(POLL_INTERVAL_S)
        finally:
            sock.close()
    raise RuntimeError(f"{what} is not listening on {host}:{port} in {ns}")


def start_static_responder(topo: Topology, ns: str, store: str, host: str, port: int,
                           identities: dict[str, Guest], workdir: Path, name: str) -> Server:
    """The project's Responder on host:port, naming guests from `identities`."""
    table = workdir / f"identities-{name}.json"
    table.write_text(json.dumps({peer: _guest_fields(g) for peer, g in identities.items()}))
    proc = topo.spawn(ns, [sys.executable, "-m", "transparent_md.lab.bench.static_responder",
                           "--store", store, "--listen", f"{host}:{port}",
                           "--identities", str(table)],
                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_line(proc, static_responder.READY_LINE, name)
    return Server(name=name, ns=ns, url=f"http://{host}:{port}", proc=proc)


def _guest_fields(guest: Guest) -> dict:
    return {"bridge": guest.bridge, "port": guest.port, "ifindex": guest.ifindex,
            "mac": guest.mac, "ip": guest.ip}


def start_aiohttp(topo: Topology, ns: str, host: str, port: int, body: str) -> Server:
    return _start_fixed_body(topo, ns, host, port, body, fixed_aiohttp, "aiohttp")


def start_floor(topo: Topology, ns: str, host: str, port: int, body: str) -> Server:
    """uvloop + httptools answering a fixed body: the floor under our responder."""
    return _start_fixed_body(topo, ns, host, port, body, floor_server, "floor")


def _start_fixed_body(topo: Topology, ns: str, host: str, port: int, body: str,
                      module: ModuleType, name: str) -> Server:
    """One of the Python fixed-body servers (`module`: its command line is server_args')."""
    proc = topo.spawn(ns, [sys.executable, "-m", module.__name__,
                           "--listen", f"{host}:{port}", "--body", body],
                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_line(proc, module.READY_LINE, name)
    return Server(name=name, ns=ns, url=f"http://{host}:{port}", proc=proc)


def nginx_config(workdir: Path, host: str, port: int, body: str) -> str:
    """A complete nginx.conf that writes only under `workdir` (pid, logs, temp dirs)."""
    temp = "\n".join(f"    {kind}_temp_path {workdir}/nginx-{kind};"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
{temp}
    keepalive_requests {NGINX_KEEPALIVE_REQUESTS};
    server {{
        listen {host}:{port} backlog=4096;
        location / {{ default_type text/plain; return 200 "{body}"; }}
    }}
}}
"""


def start_nginx(topo: Topology, ns: str, host: str, port: int, body: str,
                workdir: Path) -> Server:
    conf = workdir / "nginx.conf"
    conf.write_text(nginx_config(workdir, host, port, body))
    proc = topo.spawn(ns, ["nginx", "-p", str(workdir), "-e", str(workdir / "nginx-error.log"),
                           "-c", str(conf), "-g", "daemon off;"],
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(ns, host, port, "nginx")
    except RuntimeError:
        log = workdir / "nginx-error.log"
        raise RuntimeError(log.read_text() if log.exists() else "nginx failed") from None
    return Server(name="nginx", ns=ns, url=f"http://{host}:{port}", proc=proc)
