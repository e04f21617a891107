"""The network a cloud image expects around it, inside a test's namespaces: a router
namespace on the bridge running dnsmasq (DHCPv4 with fixed leases, DNS that resolves
metadata.google.internal to 169.254.169.254, IPv6 router advertisements), taps that
appear after the daemon is up, and records that say who each VM is.

Everything runs with `ip netns exec` in namespaces the test's Topology made; dnsmasq is
started through the topology, so it is stopped with it (and reaped on a timeout).
"""

from __future__ import annotations

import ipaddress
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests import keys
from transparent_md.lab.hypervisor import Hypervisor

METADATA_NAME = "metadata.google.internal"
METADATA_IP = "169.254.169.254"
# A hot-plugged tap is taken by the daemon on the netlink event; room for a loaded box.
PORT_TAKEN_TIMEOUT_S = 30.0
DNSMASQ_READY_TIMEOUT_S = 15.0
POLL_S = 0.1
# What the user-data's runcmd prints on the console: proof the record's user-data ran.
RUNCMD_MARKER = "TMD-VM-USER-DATA"


@dataclass(frozen=True)
class Vm:
    """One VM's identity: its record's fields and its NIC."""
    name: str
    mac: str
    tap: str
    ip: str = ""
    ip6: str = ""  # its DHCPv6 lease, where the lab serves DHCPv6

    @property
    def ssh_key(self) -> str:
        """A key only this VM's record carries (the comment names the VM)."""
        return f"{keys.ED25519} {self.name}@transparent-md-lab"

    @property
    def marker(self) -> str:
        return f"{RUNCMD_MARKER} {self.name}"

    def user_data(self) -> str:
        return ("#cloud-config\n"
                "runcmd:\n"
                f"  - [sh, -c, 'echo \"{self.marker} $(hostname)\" > /dev/ttyS0']\n")


def start_dnsmasq(hv: Hypervisor, ns: str, workdir: Path, *, leases: Sequence[Vm] = (),
                  dhcp4_range: str = "", ra_prefix: str = "",
                  dhcp6_range: str = "") -> Path:
    """dnsmasq on the router namespace's eth0: DNS for the metadata name; DHCPv4 in
    `dhcp4_range` (e.g. "10.0.0.100,10.0.0.199") when given; router advertisements of
    `ra_prefix` (e.g. "fd00:1::", SLAAC) when given, with stateful DHCPv6 in
    `dhcp6_range` as well when that is given (EC2's network config asks for DHCPv6 on a
    NIC with IPv6 addresses). `leases` get their `ip` and `ip6` by MAC. Returns its log
    (queries and leases), for tests that check what a VM asked it."""
    log = workdir / f"dnsmasq-{ns}.log"
    argv = ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv",
            "--no-hosts", "--bind-interfaces", "--interface=eth0", "--user=root",
            "--pid-file", f"--dhcp-leasefile={workdir / f'leases-{ns}'}",
            f"--log-facility={log}", "--log-dhcp", "--log-queries",
            f"--address=/{METADATA_NAME}/{METADATA_IP}"]
    if dhcp4_range:
        argv += [f"--dhcp-range={dhcp4_range},255.255.255.0,12h"]
    if ra_prefix:
        argv += ["--enable-ra"]
        argv += [f"--dhcp-range={dhcp6_range},slaac,64,12h" if dhcp6_range
                 else f"--dhcp-range={ra_prefix},ra-only,64"]
    for vm in leases:
        addresses = [vm.ip] if vm.ip else []
        addresses += [f"[{vm.ip6}]"] if vm.ip6 else []
        argv += [f"--dhcp-host={','.join([vm.mac, *addresses])}"]
    proc = hv.topo.spawn(ns, argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True)
    deadline = time.monotonic() + DNSMASQ_READY_TIMEOUT_S
    while "started, version" not in (log.read_text() if log.exists() else ""):
        assert proc.poll() is None, f"dnsmasq exited: {proc.stderr.read()}"
        assert time.monotonic() < deadline, f"dnsmasq not started: {log}"
        time.sleep(POLL_S)
    return log


def hot_plug_tap(hv: Hypervisor, tap: str, bridge: str, datapath: str) -> None:
    """As a VM manager does before qemu starts: a new tap on the bridge, up, while the
    daemon runs; returns once the daemon has taken the port."""
    hv.topo.ip(hv.ns, f"tuntap add dev {tap} mode tap vnet_hdr",
               f"link set {tap} master {bridge}", f"link set {tap} up")
    deadline = time.monotonic() + PORT_TAKEN_TIMEOUT_S
    while not hv.serves_port(tap, datapath):
        assert time.monotonic() < deadline, f"the daemon never took {tap}"
        time.sleep(POLL_S)


def slaac_address(prefix: str, mac: str) -> str:
    """The address a Linux guest forms from a router advertisement of `prefix`/64 with
    its MAC (modified EUI-64, the kernel's default address generation)."""
    octets = [int(part, 16) for part in mac.split(":")]
    octets[0] ^= 0x02
    eui = octets[:3] + [0xFF, 0xFE] + octets[3:]
    interface_id = int.from_bytes(bytes(eui), "big")
    return str(ipaddress.IPv6Address(int(ipaddress.IPv6Address(prefix)) | interface_id))
