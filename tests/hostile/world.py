"""A hypervisor with two bridges, guests with records, and a daemon started as systemd
would start it (soft RLIMIT_NOFILE 1024), shared by the hostile-neighbour tests."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from tests.conftest import write_records
from transparent_md.lab.attacks.launch import start_limited_daemon
from transparent_md.lab.hypervisor import DaemonProcess, GuestNs, Hypervisor
from transparent_md.lab.netns import Topology

BRIDGES = ("br0", "br1")
# One /24 per bridge; .1 is each segment's gateway address.
SUBNET = {"br0": "10.0.0", "br1": "10.1.0"}
GATEWAY = {br: f"{net}.1" for br, net in SUBNET.items()}
METADATA_ROUTE = "169.254.169.254/32 dev eth0"
# The daemon's metrics listener, inside the hypervisor namespace only.
METRICS = "127.0.0.1:9464"
USER_DATA = "#cloud-config\nhostname: {id}\n"
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostileHostileHostileHostileAAA {id}"
# A short curl: "answered on its first try" means no second chance.
FIRST_TRY_TIMEOUT_S = 3.0
# Guests above this address serial are free for tests to place.
FIRST_HOST = 10


@dataclass
class World:
    hv: Hypervisor
    store: str
    daemon: DaemonProcess | None = None
    datapath: str | None = None  # `run --datapath` (None: the default)
    guests: dict[str, GuestNs] = field(default_factory=dict)
    _serial: dict[str, int] = field(default_factory=lambda: dict.fromkeys(BRIDGES, FIRST_HOST))

    @property
    def topo(self) -> Topology:
        return self.hv.topo

    def add_guest(self, role: str, bridge: str = "br0", *, record: bool = True,
                  mac: str | None = None, ip: str | None = None,
                  routes: Sequence[str] = (METADATA_ROUTE,),
                  port: str | None = None) -> GuestNs:
        """A guest on `bridge` with an on-link route to the metadata address, and (by
        default) a record bound to its MAC and bridge, as the README recommends.
        `port` names its bridge port (a VM's tap: `vnetN`; default `p<role>`)."""
        if ip is None:
            ip = self.next_ip(bridge)
        g = self.hv.guest(role, bridge=bridge, port=port or f"p{role}", addr=f"{ip}/24",
                          routes=routes, mac=mac)
        self.guests[role] = g
        if record:
            write_records(self.store, [record_for(role, g)])
        return g

    def next_ip(self, bridge: str = "br0") -> str:
        self._serial[bridge] += 1
        return f"{SUBNET[bridge]}.{self._serial[bridge]}"

    def remove_port(self, port: str) -> None:
        """Delete a guest's bridge port, as the hypervisor deletes a stopped VM's tap."""
        self.topo.ip(self.hv.ns, f"link del {port}")

    def hook(self, xml: str, domain: str, operation: str, *extra: str,
             subop: str = "begin") -> subprocess.CompletedProcess:
        """The libvirt hook as libvirtd runs it on this hypervisor (--store, its netns)."""
        return self.topo.sh(self.hv.ns, [
            sys.executable, "-m", "transparent_md", "libvirt-hook", "--store", self.store,
            *extra, domain, operation, subop, "-"], input=xml, timeout=60)

    def cli(self, *argv: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        """`transparent-md ARGV` on this hypervisor (its netns: where ports are links)."""
        return self.topo.sh(self.hv.ns, [sys.executable, "-m", "transparent_md", *argv],
                            input=stdin, timeout=60)

    def start(self, extra: Sequence[str] = ()) -> None:
        gateways = [a for br in BRIDGES for a in ("--gateway", f"{br}={GATEWAY[br]}")]
        datapath = ["--datapath", self.datapath] if self.datapath else []
        self.daemon = start_limited_daemon(self.hv, BRIDGES, self.store,
                                           ["--metrics", METRICS, *gateways, *datapath, *extra])

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()
            self.daemon = None

    def curl(self, role: str, path: str = "/latest/meta-data/instance-id",
             timeout: float = FIRST_TRY_TIMEOUT_S) -> tuple[int, str]:
        return self.hv.curl(self.guests[role].ns, path, timeout=timeout)

    def metrics(self) -> tuple[int, str]:
        """GET /metrics from the hypervisor namespace: (status, body); 0 if no answer."""
        res = self.topo.sh(self.hv.ns, ["curl", "-sS", "-m", "5", "-o", "-", "-w",
                                        "\n%{http_code}", f"http://{METRICS}/metrics"])
        if res.returncode != 0:
            return 0, res.stderr
        body, _, code = res.stdout.rpartition("\n")
        return int(code), body

    def assert_serves(self, role: str) -> None:
        assert self.curl(role) == (200, instance_id(role)), (role, self.log_tail())

    def log_tail(self, lines: int = 30) -> str:
        return "".join(self.daemon.output[-lines:]) if self.daemon else ""


DOMAIN_XML = """<domain type='kvm'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <metadata>
    <tmd:instance xmlns:tmd="urn:transparent-md:metadata:1"><![CDATA[{metadata}]]></tmd:instance>
  </metadata>
  <devices>
    <interface type='bridge'>
      <mac address='{mac}'/>
      <source bridge='{bridge}'/>
      {target}
      <model type='virtio'/>
    </interface>
  </devices>
</domain>
"""


def domain_xml(name: str, uuid: str, mac: str, bridge: str, tap: str | None,
               metadata: dict) -> str:
    """A libvirt domain XML with one NIC, as libvirtd hands it to its qemu hook; `tap`
    None: no <target dev> (libvirt has not named the tap)."""
    target = f"<target dev='{tap}'/>" if tap else ""
    return DOMAIN_XML.format(name=name, uuid=uuid, mac=mac, bridge=bridge, target=target,
                             metadata=json.dumps(metadata))


def instance_id(role: str) -> str:
    return f"i-{role}"


def record_for(role: str, g: GuestNs) -> dict:
    iid = instance_id(role)
    return {"instance_id": iid, "mac": g.mac, "ip": g.ip, "bridge": g.bridge,
            "hostname": f"host-{role}", "user_data": USER_DATA.format(id=iid),
            "ssh_keys": {"me": SSH_KEY.format(id=iid)}}


def build_world(topology: Topology, tmp_dir, datapath: str | None = None) -> World:
    hv = Hypervisor(topology)
    for br in BRIDGES:
        hv.bridge(br)
    return World(hv=hv, store=str(tmp_dir / "instances.db"), datapath=datapath)


def metric_value(text: str, name: str) -> float:
    """Sum of every sample of metric `name` in Prometheus text (0 if absent)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            head = line.split(" ")[0]
            if head == name or head.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
    return total


def wait_seconds(until: float) -> None:
    time.sleep(max(0.0, until - time.monotonic()))


def dump(result: dict) -> str:
    return json.dumps(result, indent=None)


def run_cli(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "transparent_md", *argv],
                          capture_output=True, text=True, timeout=timeout)
