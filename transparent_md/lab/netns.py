"""Throw-away network namespaces for the demo, the tests and the benchmark.

Every namespace carries a per-run prefix so two runs never collide, and only the
namespaces this object created are ever deleted. Processes started through it are
ended by PID before their namespace goes away.

The prefix is `<base><6 random hex digits>`; the base comes from the caller (the
demo's and bench's --netns-prefix), else $TMD_NETNS_PREFIX, else "tmd", so two
projects or two users sharing a host can keep their namespaces apart by name.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from transparent_md.names import DEFAULT_NETNS_PREFIX, NETNS_PREFIX_ENV, PIN_ROOT, STATE_ROOT
from transparent_md.process import stop_process

NETNS_DIR = Path("/run/netns")
NAMESPACE_RESOLV_CONF = "nameserver 127.0.0.1\n"
# Namespace names become file names under /run/netns and /etc/netns and appear in
# shell commands we print: letters, digits, '-' and '_' only, starting with a letter.
# 32 characters leaves the whole name (prefix + 6 hex + "-" + role) far below NAME_MAX.
NETNS_PREFIX_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")


def netns_prefix(chosen: str | None = None) -> str:
    """The base of namespace names: `chosen`, else $TMD_NETNS_PREFIX, else "tmd".

    Raises ValueError naming the rule when the base is not a safe name.
    """
    base = chosen or os.environ.get(NETNS_PREFIX_ENV) or DEFAULT_NETNS_PREFIX
    if not NETNS_PREFIX_PATTERN.fullmatch(base):
        raise ValueError(f"namespace prefix {base!r}: use 1-32 letters, digits, '-' or '_', "
                         "starting with a letter")
    return base


class Topology:
    """Owner of a set of namespaces; use as a context manager so cleanup always runs."""

    def __init__(self, prefix: str | None = None) -> None:
        # 6 hex digits: unique enough per machine, short enough for readable names.
        self.prefix = f"{netns_prefix(prefix)}{secrets.token_hex(3)}"
        self.namespaces: list[str] = []
        self.processes: list[subprocess.Popen] = []

    # -- namespaces ---------------------------------------------------------------
    def ns_name(self, role: str) -> str:
        return f"{self.prefix}-{role}"

    def add_ns(self, role: str) -> str:
        """Create namespace `<prefix>-<role>` with loopback up; returns its name."""
        name = self.ns_name(role)
        run(["ip", "netns", "add", name])
        self.namespaces.append(name)
        self.ip(name, "link set lo up")
        # `ip netns exec` mounts /etc/netns/NAME/* over /etc: the namespace gets its own
        # resolv.conf (DNS on its own loopback: fails at once instead of timing out), and
        # a DHCP client in it can never rewrite the host's.
        etc = Path("/etc/netns") / name
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text(NAMESPACE_RESOLV_CONF)
        return name

    def ip(self, ns: str | None, *commands: str) -> None:
        """Run `ip` commands inside `ns` (one process per call, via -batch)."""
        base = ["ip"] + (["-n", ns] if ns else []) + ["-batch", "-"]
        run(base, stdin="\n".join(commands) + "\n")

    def sh(self, ns: str, argv: Sequence[str], **kw) -> subprocess.CompletedProcess:
        """Run a command inside `ns` and wait for it."""
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        return subprocess.run(["ip", "netns", "exec", ns, *argv], **kw)

    def spawn(self, ns: str, argv: Sequence[str], **kw) -> subprocess.Popen:
        """Start a long-running process inside `ns`; it is stopped on cleanup."""
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], **kw)
        self.processes.append(proc)
        return proc

    # -- building blocks ----------------------------------------------------------
    def bridge(self, hv: str, name: str) -> None:
        self.ip(hv, f"link add {name} type bridge", f"link set {name} up")

    def guest(
        self,
        hv: str,
        role: str,
        *,
        bridge: str,
        port: str,
        addr: str | None,
        mac: str | None = None,
        routes: Sequence[str] = (),
    ) -> str:
        """A guest namespace wired to `bridge` in `hv` through veth `port`.

        `addr` is "10.0.0.5/24" (None leaves eth0 unaddressed, for DHCP);
        `routes` are `ip route add` arguments run in the guest.
        """
        ns = self.add_ns(role)
        self.ip(
            hv,
            f"link add {port} type veth peer name eth0 netns {ns}",
            f"link set {port} master {bridge}",
            f"link set {port} up",
        )
        cmds = []
        if mac:
            cmds.append(f"link set eth0 address {mac}")
        if addr:
            cmds.append(f"addr add {addr} dev eth0")
        cmds.append("link set eth0 up")
        cmds += [f"route add {r}" for r in routes]
        self.ip(ns, *cmds)
        return ns

    # -- cleanup ------------------------------------------------------------------
    def close(self) -> None:
        for proc in reversed(self.processes):
            stop_process(proc)
        self.processes.clear()
        for ns in reversed(self.namespaces):
            remove_namespace(ns)
        self.namespaces.clear()

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def remove_namespace(ns: str) -> None:
    """Delete namespace `ns` (one we created) with everything living in it or named
    after it: its processes, daemons' state and responder namespace, /etc/netns/NS."""
    kill_pids_in(ns)
    forget_daemon_state(ns)
    subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    resolv = Path("/etc/netns") / ns
    if resolv.is_dir():
        for child in resolv.iterdir():
            child.unlink()
        resolv.rmdir()


def forget_daemon_state(ns: str) -> None:
    """Remove what daemons run in namespace `ns` left behind: their state under
    /run/transparent-md (lock, token secret, status), their pins, and the responder
    namespace of a daemon that was killed. All are named after `ns`'s inode, so only
    ours match, and all are useless once the namespace is gone."""
    try:
        inode = os.stat(NETNS_DIR / ns).st_ino
    except OSError:
        return
    for root in (STATE_ROOT, PIN_ROOT):
        if root.is_dir():
            for state in root.glob(f"*-{inode}"):
                if state.is_dir():
                    shutil.rmtree(state, ignore_errors=True)
    if NETNS_DIR.is_dir():
        for responder in NETNS_DIR.glob(f"*-{inode}-responder"):
            kill_pids_in(responder.name)
            subprocess.run(["ip", "netns", "del", responder.name], capture_output=True)


def run(argv: Sequence[str], stdin: str | None = None) -> str:
    """Run a command; on failure raise with its stderr so the cause is visible."""
    res = subprocess.run(list(argv), input=stdin, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {res.stderr.strip() or res.stdout.strip()}")
    return res.stdout


def kill_pids_in(ns: str) -> None:
    """End processes still living in a namespace we created (e.g. a dhclient)."""
    res = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
    pids = [int(p) for p in res.stdout.split() if p.isdigit() and int(p) != os.getpid()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if pids:
        time.sleep(0.05)
