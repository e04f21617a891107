"""Every name a daemon derives from `--name`: devices, namespaces, pins, state files.

Two daemons in one network namespace differ by `--name`; the same `--name` in two
network namespaces differs by the namespace's inode. Everything that must be found
again after a crash (pins, the responder namespace, the recorded ports) is named here
and nowhere else, so the daemon, its workers, `status` and the lab agree.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_NAME = "tmd"
# Interface names are at most IFNAMSIZ - 1 bytes.
IFNAME_MAX = 15
# Kept short so `<name>-md` always fits in an interface name.
NAME_MAX = 11
PIN_ROOT = Path("/sys/fs/bpf/transparent-md")
STATE_ROOT = Path("/run/transparent-md")
# The base of the namespace names a lab topology (demo, bench, tests) creates; here, not
# in the lab, because `demo --help` and `bench --help` name it where the lab is absent.
NETNS_PREFIX_ENV = "TMD_NETNS_PREFIX"
DEFAULT_NETNS_PREFIX = "tmd"
# The responder-side veth end inside a namespace of our own: nobody else lives there.
RESPONDER_VETH_IN_OWN_NETNS = "md1"


def netns_inode() -> int:
    """Inode of this thread's network namespace: tells apart daemons in different ones."""
    return os.stat("/proc/thread-self/ns/net").st_ino


@dataclass(frozen=True)
class DaemonNames:
    """Names of one daemon (`--name`) in one network namespace (`inode`)."""

    name: str
    inode: int
    own_responder_netns: bool = True
    # Put before the responder namespace's name (`run --responder-netns-prefix`): a lab
    # names every namespace it makes with its own prefix, the daemon's one included.
    netns_prefix: str = ""

    @classmethod
    def here(cls, name: str = DEFAULT_NAME, own_responder_netns: bool = True,
             netns_prefix: str = "") -> DaemonNames:
        return cls(name, netns_inode(), own_responder_netns, netns_prefix)

    @property
    def daemon_id(self) -> str:
        """`<name>-<netns inode>`: unique per host, stable across restarts."""
        return f"{self.name}-{self.inode}"

    @property
    def host_veth(self) -> str:
        """Host end of the responder's veth pair; the reply program runs on its ingress."""
        return f"{self.name}-md"[:IFNAME_MAX]

    @property
    def responder_veth(self) -> str:
        """Responder end, holding 169.254.169.254. In the host namespace (no namespace of
        our own) it carries our name, so it can never be mistaken for someone's `md1`."""
        if self.own_responder_netns:
            return RESPONDER_VETH_IN_OWN_NETNS
        return f"{self.name}-md1"[:IFNAME_MAX]

    @property
    def responder_netns(self) -> str | None:
        """Our namespace for the responder side, or None for the current namespace."""
        if not self.own_responder_netns:
            return None
        return f"{self.netns_prefix}{self.daemon_id}-responder"

    @property
    def pin_dir(self) -> Path:
        return PIN_ROOT / self.daemon_id

    @property
    def state_dir(self) -> Path:
        return STATE_ROOT / self.daemon_id

    @property
    def api_socket(self) -> Path:
        """The admin API's default unix socket (`run --api`). Named by `--name` alone, so
        hooks and scripts find it without knowing the namespace; a second daemon with the
        same name elsewhere finds it taken and must be given its own `--api PATH`."""
        return STATE_ROOT / f"{self.name}.sock"

    @property
    def ports_file(self) -> Path:
        return self.state_dir / "ports.json"

    @property
    def locks_file(self) -> Path:
        """The MAC locks, kept across restarts (datapath.lock_file)."""
        return self.state_dir / "mac-locks.json"

    @property
    def stats_dir(self) -> Path:
        return self.state_dir / "stats"

    @property
    def lock_file(self) -> Path:
        return self.state_dir / "lock"

    @property
    def token_secret_file(self) -> Path:
        return self.state_dir / "token-secret"
