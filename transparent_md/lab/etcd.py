"""etcd servers (Debian's `etcd-server`) started in a namespace of ours, for the tests,
the fleet demo and the fleet benchmark: never one already running, never the system's
service. Data directories live under a directory the caller owns (a tmp dir).
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from transparent_md.lab.netns import Topology
from transparent_md.process import stop_process

ETCD_BINARY = "etcd"
CLIENT_PORT = 2379
PEER_PORT = 2380
# A member or a new cluster answers /health within a few seconds; a loaded CI box may
# need more.
READY_TIMEOUT_S = 30.0


@dataclass
class EtcdMember:
    name: str
    ip: str
    data_dir: Path
    proc: subprocess.Popen | None = None

    @property
    def client_url(self) -> str:
        return f"http://{self.ip}:{CLIENT_PORT}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.ip}:{PEER_PORT}"


class EtcdCluster:
    """One or more etcd members in namespace `ns`, one address each (already assigned)."""

    def __init__(self, topo: Topology, ns: str, ips: list[str], data_root: Path) -> None:
        self.topo = topo
        self.ns = ns
        self.members = [EtcdMember(f"m{i}", ip, data_root / f"m{i}")
                        for i, ip in enumerate(ips)]
        self.log_dir = data_root
        self._token = f"tmd-{topo.prefix}"

    def url(self, prefix: str = "/tmd") -> str:
        """The `--store` URL naming every member."""
        return "etcd://" + ",".join(f"{m.ip}:{CLIENT_PORT}" for m in self.members) + prefix

    def start(self) -> EtcdCluster:
        for member in self.members:
            self.start_member(member, new=True)
        for member in self.members:
            self.wait_healthy(member)
        return self

    def start_member(self, member: EtcdMember, *, new: bool = False) -> None:
        """Start (or restart, keeping its data) one member."""
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        member.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{member.name}.log", "a")  # noqa: SIM115 - the child owns it
        member.proc = self.topo.spawn(self.ns, [
            ETCD_BINARY, "--name", member.name, "--data-dir", str(member.data_dir),
            "--listen-client-urls", member.client_url,
            "--advertise-client-urls", member.client_url,
            "--listen-peer-urls", member.peer_url,
            "--initial-advertise-peer-urls", member.peer_url,
            "--initial-cluster", initial, "--initial-cluster-token", self._token,
            "--initial-cluster-state", "new" if new else "existing",
            "--log-level", "warn",
        ], stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def wait_healthy(self, member: EtcdMember, timeout: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            res = self.topo.sh(self.ns, ["curl", "-s", "-m", "1", f"{member.client_url}/health"])
            if '"health":"true"' in res.stdout:
                return
            if member.proc is not None and member.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"etcd {member.name} not healthy:\n{self.log(member)}")

    def log(self, member: EtcdMember) -> str:
        path = self.log_dir / f"{member.name}.log"
        return path.read_text()[-4000:] if path.exists() else ""

    def stop_member(self, member: EtcdMember) -> None:
        if member.proc is not None:
            stop_process(member.proc)
            member.proc = None

    def kill_member(self, member: EtcdMember) -> None:
        """SIGKILL, as a crash would."""
        if member.proc is not None:
            member.proc.kill()
            member.proc.wait()
            member.proc = None

    def stop(self) -> None:
        for member in self.members:
            self.stop_member(member)

    def etcdctl(self, *args: str) -> str:
        """etcdctl against the members (from inside their namespace)."""
        endpoints = ",".join(m.client_url for m in self.members)
        res = self.topo.sh(self.ns, ["etcdctl", f"--endpoints={endpoints}", *args],
                           env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})
        if res.returncode != 0:
            raise RuntimeError(f"etcdctl {' '.join(args)}: {res.stderr.strip()}")
        return res.stdout


def fleet_network(topo: Topology, etcd_ns: str, hv_namespaces: list[str],
                  etcd_ips: list[str], subnet_bits: int = 24) -> dict[str, str]:
    """Wire `etcd_ns` to each hypervisor namespace by a bridge in `etcd_ns` and a veth
    per hypervisor; returns hypervisor namespace -> its address. Addresses are of the
    benchmark range 198.18.0.0/15 (RFC 2544), set only inside our namespaces."""
    bridge = "fleet0"
    topo.ip(etcd_ns, f"link add {bridge} type bridge", f"link set {bridge} up",
            *[f"addr add {ip}/{subnet_bits} dev {bridge}" for ip in etcd_ips])
    addresses = {}
    for index, ns in enumerate(hv_namespaces):
        here, there = f"fl{index}", f"fleet{index}"
        address = f"198.18.0.{index + 1}"
        topo.ip(etcd_ns, f"link add {here} type veth peer name {there} netns {ns}",
                f"link set {here} master {bridge}", f"link set {here} up")
        topo.ip(ns, f"addr add {address}/{subnet_bits} dev {there}", f"link set {there} up")
        addresses[ns] = address
    return addresses


FLEET_ETCD_IPS = ["198.18.0.10", "198.18.0.11", "198.18.0.12"]
