"""A hypervisor in a namespace: bridges, guests, routers, and the `run` daemon inside it.

Shared by the demo, the tests and the benchmark so all three build the same thing.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from transparent_md.daemon.serving import READY_LINE
from transparent_md.datapath import programs
from transparent_md.lab.netns import NETNS_DIR, Topology
from transparent_md.names import DEFAULT_NAME, DaemonNames
from transparent_md.process import stop_process

METADATA_URL = "http://169.254.169.254"
PROGRAM_PREFIXES = (programs.PORT_PROGRAM, programs.MD_PROGRAM)
# Compiling the programs takes ~1-2 s; a loaded CI machine gets generous room.
DAEMON_START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class GuestNs:
    ns: str
    bridge: str
    port: str
    mac: str
    ip: str


def daemon_names(hv_ns: str, name: str = DEFAULT_NAME) -> DaemonNames:
    """What `run --name NAME` started by `Hypervisor.start_daemon` in namespace `hv_ns`
    calls its devices, responder namespace, pins and state (derived from the
    namespace's inode; its responder namespace starts with the lab's prefix)."""
    return DaemonNames(name, os.stat(NETNS_DIR / hv_ns).st_ino,
                       netns_prefix=responder_netns_prefix(hv_ns))


def responder_netns_prefix(hv_ns: str) -> str:
    """`run --responder-netns-prefix` for a daemon in the lab's namespace `hv_ns`
    (`<lab prefix>-hv`): the lab's prefix, so its namespace is the lab's too."""
    return hv_ns.rsplit("-", 1)[0] + "-"


class DaemonProcess:
    """`transparent-md run` started in the hypervisor namespace, with its output kept."""

    def __init__(self, topo: Topology, hv: str, argv: Sequence[str],
                 env: dict[str, str] | None = None, prefix: Sequence[str] = (),
                 python: str = sys.executable) -> None:
        self.argv = list(argv)
        self.proc = topo.spawn(
            hv, [*prefix, python, "-m", "transparent_md", "run", *argv],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, **env} if env else None,
        )
        self.output: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.output.append(line)
            self._lines.put(line)
        self._lines.put(None)

    def wait_ready(self, timeout: float = DAEMON_START_TIMEOUT_S) -> None:
        while True:
            try:
                line = self._lines.get(timeout=timeout)
            except queue.Empty:
                raise RuntimeError(f"daemon not ready after {timeout}s:\n{self.log()}") from None
            if line is None:
                raise RuntimeError(f"daemon exited ({self.proc.wait()}):\n{self.log()}")
            if line.strip() == READY_LINE:
                return

    def in_responder_netns(self, responder_netns: str, argv: Sequence[str]) -> list[str]:
        """`argv` to run inside this daemon's responder namespace. `ip netns exec` gave
        the daemon a mount namespace of its own, and that is where the name is mounted."""
        return ["nsenter", "-t", str(self.proc.pid), "-m", "ip", "netns", "exec",
                responder_netns, *argv]

    def log(self) -> str:
        return "".join(self.output)

    def stop(self) -> int:
        stop_process(self.proc, grace=15)
        return self.proc.returncode

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


class Hypervisor:
    """One `hv` namespace plus the guests wired to its bridges."""

    def __init__(self, topo: Topology, role: str = "hv") -> None:
        self.topo = topo
        self.ns = topo.add_ns(role)
        self.guests: dict[str, GuestNs] = {}
        self.bridges: list[str] = []
        self._mac_serial = 0

    def bridge(self, name: str) -> str:
        self.topo.bridge(self.ns, name)
        self.bridges.append(name)
        return name

    def next_mac(self) -> str:
        """Deterministic, locally administered guest MACs: 02:00:00:00:hi:lo."""
        self._mac_serial += 1
        return f"02:00:00:00:{self._mac_serial >> 8:02x}:{self._mac_serial & 0xFF:02x}"

    def guest(self, role: str, *, bridge: str, port: str, addr: str | None,
              routes: Sequence[str] = (), mac: str | None = None) -> GuestNs:
        """A guest on `bridge`; `addr` like "10.0.0.5/24", `routes` as for `ip route add`."""
        mac = mac or self.next_mac()
        ns = self.topo.guest(self.ns, role, bridge=bridge, port=port, addr=addr, mac=mac,
                             routes=routes)
        guest = GuestNs(ns=ns, bridge=bridge, port=port, mac=mac,
                        ip=addr.split("/")[0] if addr else "")
        self.guests[role] = guest
        return guest

    def router(self, role: str, *, bridge: str, port: str, addr: str) -> GuestNs:
        """A namespace holding a segment's gateway address (a real router for the test)."""
        return self.guest(role, bridge=bridge, port=port, addr=addr)

    def start_daemon(self, bridges: Sequence[str], store: str, extra: Sequence[str] = (),
                     env: dict[str, str] | None = None, prefix: Sequence[str] = (),
                     python: str = sys.executable, datapath: str | None = None) -> DaemonProcess:
        """`run` in this hypervisor; `prefix` wraps it (e.g. `prlimit --nofile=...`),
        `python` is the interpreter of the install under test, `datapath` its
        `--datapath` (None: the default)."""
        argv = [a for br in bridges for a in ("--bridge", br)] + ["--store", store, *extra]
        if "--responder-netns-prefix" not in extra:
            argv += ["--responder-netns-prefix", responder_netns_prefix(self.ns)]
        if datapath is not None:
            argv += ["--datapath", datapath]
        if "--api" not in extra:
            # The default socket is named by --name alone, in the host's /run: a lab
            # daemon must never take (or meet) a real daemon's admin API there.
            argv += ["--api", "none"]
        daemon = DaemonProcess(self.topo, self.ns, argv, env=env, prefix=prefix, python=python)
        daemon.wait_ready()
        return daemon

    def curl(self, guest_ns: str, path: str, *, timeout: float = 5.0,
             extra: Sequence[str] = ()) -> tuple[int, str]:
        """GET path from inside a guest with the real curl: (HTTP status, body)."""
        res = self.topo.sh(guest_ns, [
            "curl", "-sS", "-m", str(timeout), "-o", "-", "-w", "\n%{http_code}",
            *extra, f"{METADATA_URL}{path}",
        ])
        if res.returncode != 0:
            return 0, res.stderr.strip()
        body, _, code = res.stdout.rpartition("\n")
        return int(code), body

    def tc_filters(self, port: str, direction: str = "ingress") -> list[dict]:
        res = self.topo.sh(self.ns, ["tc", "-j", "filter", "show", "dev", port, direction])
        return json.loads(res.stdout or "[]") if res.returncode == 0 else []

    def raw_ports(self, name: str = DEFAULT_NAME) -> set[str]:
        """The ports the raw datapath of daemon `name` judges (its nftables port set)."""
        res = self.topo.sh(self.ns, ["nft", "-j", "list", "set", "bridge",
                                     raw_table_name(name), "ports"])
        if res.returncode != 0:
            return set()
        for item in json.loads(res.stdout).get("nftables", []):
            if "set" in item:
                return set(item["set"].get("elem", []))
        return set()

    def serves_port(self, port: str, datapath: str) -> bool:
        """Whether the daemon has taken `port` (tc: our filter on it; raw: in its set)."""
        return port in self.raw_ports() if datapath == "raw" else bool(self.our_filters(port))

    def our_filters(self, port: str, direction: str = "ingress") -> list[dict]:
        """transparent-md's filters on a port (its program name), as `tc -j` shows them."""
        return [f for f in self.tc_filters(port, direction)
                if f.get("options", {}).get("bpf_name", "").startswith(PROGRAM_PREFIXES)]


def raw_table_name(name: str = DEFAULT_NAME) -> str:
    from transparent_md.datapath.raw.nft_table import table_name

    return table_name(DaemonNames(name, 0))


def venv_env() -> dict[str, str]:
    """Environment for children: unbuffered, so READY and logs arrive at once."""
    return {**os.environ, "PYTHONUNBUFFERED": "1"}
