"""Starting the attack tools and a daemon limited as systemd starts it.

Tests and the bench share these, so both attack the daemon the same way: a tool runs
in a guest's namespace as `python -m transparent_md.lab.attacks.<tool>`, and its one
JSON result line is read when it ends.
"""

from __future__ import annotations

import json
import re
import resource
import select
import subprocess
import sys
import time
from collections.abc import Sequence

from transparent_md.lab.hypervisor import DaemonProcess, Hypervisor
from transparent_md.lab.netns import Topology

# systemd's default for services without LimitNOFILE: soft 1024, hard 524288.
SYSTEMD_SOFT_NOFILE = 1024
SYSTEMD_HARD_NOFILE = 524288
# A tool may run this much past its own --seconds (start-up, building frames, closing).
TOOL_GRACE_S = 30.0


class Tool:
    """One attack tool running in a namespace; `result()` waits and parses its JSON."""

    def __init__(self, topo: Topology, ns: str, module: str, args: Sequence[str]) -> None:
        self.module = module
        self.proc = topo.spawn(
            ns, [sys.executable, "-m", f"transparent_md.lab.attacks.{module}", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def wait_for(self, line: str, timeout: float) -> None:
        """Wait until the tool says `line` on stderr (a tool that prepares for seconds
        says when its attack starts); RuntimeError if it ends or the time passes first."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self.proc.stderr], [], [], left)
            if not ready:
                break
            said = self.proc.stderr.readline()
            if said.strip() == line:
                return
            if not said:
                break
        raise RuntimeError(f"{self.module} did not say {line!r} within {timeout:g} s "
                           f"(exit status {self.proc.poll()})")

    def result(self, timeout: float) -> dict:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
            raise RuntimeError(f"{self.module} still running after {timeout:g} s:\n{err}") from None
        lines = [line for line in out.splitlines() if line.startswith("{")]
        if self.proc.returncode != 0 or not lines:
            raise RuntimeError(f"{self.module} failed ({self.proc.returncode}):\n{out}\n{err}")
        return json.loads(lines[-1])


def run_tool(topo: Topology, ns: str, module: str, args: Sequence[str],
             timeout: float) -> dict:
    return Tool(topo, ns, module, args).result(timeout)


def systemd_nofile() -> tuple[int, int]:
    """systemd's (soft, hard) descriptor limits, the hard one capped at what this
    process may grant (a container may not allow raising it)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        return SYSTEMD_SOFT_NOFILE, SYSTEMD_HARD_NOFILE
    return SYSTEMD_SOFT_NOFILE, min(hard, SYSTEMD_HARD_NOFILE)


def start_limited_daemon(hv: Hypervisor, bridges: Sequence[str], store: str,
                         extra: Sequence[str] = (),
                         nofile: tuple[int, int] | None = None) -> DaemonProcess:
    """`transparent-md run` under `prlimit --nofile=SOFT:HARD`, as a systemd unit
    without LimitNOFILE starts it (the daemon must raise its own soft limit)."""
    soft, hard = nofile or systemd_nofile()
    return hv.start_daemon(bridges, store, extra, prefix=["prlimit", f"--nofile={soft}:{hard}"])


def run_flags() -> set[str]:
    """The long options `transparent-md run` accepts (protection flags land one by one:
    callers pass only those the daemon knows and say which were missing)."""
    res = subprocess.run([sys.executable, "-m", "transparent_md", "run", "--help"],
                         capture_output=True, text=True)
    return set(re.findall(r"--[a-z][a-z0-9-]+", res.stdout))


def known_flags(flags: dict[str, str | None]) -> tuple[list[str], list[str]]:
    """(argv of the flags `run` accepts, names of those it does not know); a None value
    is a flag without an argument."""
    available = run_flags()
    argv = [a for k, v in flags.items() if k in available
            for a in ((k,) if v is None else (k, v))]
    return argv, [k for k in flags if k not in available]


def secondary_addresses(topo: Topology, ns: str, addrs: Sequence[str]) -> None:
    """Give a guest's eth0 more addresses (one per attacking process: each source
    address has its own 28k ephemeral ports towards one server port)."""
    topo.ip(ns, *(f"addr add {a} dev eth0" for a in addrs))


def widen_local_ports(topo: Topology, ns: str) -> None:
    """Let one source address open ~64k connections to one server port (per-netns
    sysctl, in the attacker's own namespace only)."""
    topo.sh(ns, ["sysctl", "-q", "-w", "net.ipv4.ip_local_port_range=1024 65000"],
            check=True)


def serving_pid(daemon: DaemonProcess) -> int:
    """The daemon's own process: the one started, or the first of its descendants
    that runs `transparent_md` (`ip netns exec` and `prlimit` exec it, but a wrapper
    that forks would leave it a child)."""
    pid = daemon.proc.pid
    for _ in range(4):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"transparent_md" in f.read():
                    return pid
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                children = f.read().split()
        except OSError:
            break
        if not children:
            break
        pid = int(children[0])
    return daemon.proc.pid


def rss_bytes(pid: int) -> int:
    """Resident memory of process `pid` (VmRSS), 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
