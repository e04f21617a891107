"""Acceptance 3, with a real qemu guest: the libvirt hook (the wrapper and daemon that
`scripts/install` put in a temporary prefix, the wrapper driven as libvirtd drives it,
with libvirtd's bare environment, through the daemon's admin API) binds web-1's record to its tap
`vnet0`; a guest on another port with the same MAC and IP, asking first, gets nothing,
and then a qemu guest booted on vnet0 gets web-1's instance-id and user-data.

The guest is Debian's kernel with a busybox initramfs built for the test (tiny_vm.py):
virtio-net NIC with the domain XML's MAC on a tap named as the XML's `<target dev>`,
created in the hypervisor namespace and put on the bridge before qemu opens it, as
libvirt does. Its requests leave a virtio driver with checksum offload, the case the
datapath must handle for every VM. KVM is used where the CPU offers it, else TCG.

The positive control shows the forger's request does reach the responder and would
be answered without the port binding: the same forgery against a record bound only to
MAC and bridge (written through the admin API, as a setup without the hook would)
returns the victim's data. After the stop hook, that record is parked: nothing.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.installed import INSTALLED_ONLY, run_as_libvirtd
from tests.libvirt import tiny_vm
from transparent_md.api.client import ApiClient
from transparent_md.integrations.libvirt import parse_domain
from transparent_md.lab.hypervisor import Hypervisor

pytestmark = pytest.mark.netns

DOMAINS = Path(__file__).parent / "domains"
WEB1_XML = (DOMAINS / "web-1.xml").read_bytes()
WEB1_NIC = parse_domain(WEB1_XML).nics[0]  # MAC 52:54:00:a1:00:01, tap vnet0 on br0
WEB1_UUID = "6c0f2a4e-9d3b-4a55-8e0a-6f1d2c3b4a51"  # its <uuid>
GUEST_ADDR = "10.0.0.21/24"
CONTROL_MAC = "52:54:00:c0:00:01"
INSTANCE_ID = "/latest/meta-data/instance-id"
HOSTNAME = "/latest/meta-data/hostname"
USER_DATA = "/latest/user-data"
OPENSTACK_META = "/openstack/latest/meta_data.json"
GUEST_PATHS = (INSTANCE_ID, USER_DATA, OPENSTACK_META)
# TCG boots the guest and fetches in ~6 s on an idle 2-core machine; a loaded CI box
# gets far more room. Only a hung guest reaches it (then qemu alone is killed).
GUEST_RUN_TIMEOUT_S = 240.0
# The daemon attaches its programs to a new port on the netlink event, well under a
# second; the guest must not boot on a port not yet attached.
PORT_ATTACH_TIMEOUT_S = 30.0
PORT_ATTACH_POLL_S = 0.1


@pytest.fixture(scope="module")
def hv(topology, tmp_path_factory, installed_prefix):
    hv = Hypervisor(topology)
    hv.bridge("br0")
    route = ["169.254.169.254/32 dev eth0"]
    hv.guest("forger", bridge="br0", port="vnet1", addr=GUEST_ADDR, mac=WEB1_NIC.mac,
             routes=route)
    hv.guest("control", bridge="br0", port="vnet2", addr="10.0.0.22/24", mac=CONTROL_MAC,
             routes=route)
    hv.guest("control-forger", bridge="br0", port="vnet3", addr="10.0.0.22/24",
             mac=CONTROL_MAC, routes=route)
    tmp = tmp_path_factory.mktemp("libvirt")
    hv.api = str(tmp / "api.sock")
    hv.daemon = hv.start_daemon(["br0"], str(tmp / "instances.db"), ["--api", hv.api],
                                python=str(installed_prefix.python), env=INSTALLED_ONLY)
    hv.wrapper = str(installed_prefix.libvirt_hook)
    conf = installed_prefix.hook_conf()
    shipped = conf.read_text()
    conf.write_text(f"TMD_API={hv.api}\nTMD_BRIDGES=br0\n")
    yield hv
    conf.write_text(shipped)
    hv.daemon.stop()


def libvirtd_runs_hook(hv, domain: str, operation: str, xml: bytes) -> None:
    """/etc/libvirt/hooks/qemu DOMAIN OPERATION SUBOP EXTRA, the XML on stdin."""
    subop = "begin" if operation in ("prepare", "start", "started") else "end"
    # libvirtd runs on the host, where the taps are: the hypervisor's namespace here.
    result = run_as_libvirtd(["ip", "netns", "exec", hv.ns, hv.wrapper, domain, operation,
                              subop, "-"], xml, timeout=30)
    assert result.returncode == 0 and result.stdout == b"", result.stderr


def libvirt_creates_tap(hv, tap: str, bridge: str) -> None:
    """As libvirt before it starts qemu: the tap, on the bridge, up. qemu then opens
    it by name (libvirt hands it the fd instead; the device is the same)."""
    hv.topo.ip(hv.ns, f"tuntap add dev {tap} mode tap vnet_hdr",
               f"link set {tap} master {bridge}", f"link set {tap} up")
    deadline = time.monotonic() + PORT_ATTACH_TIMEOUT_S
    while not hv.our_filters(tap):
        assert time.monotonic() < deadline, f"daemon never attached to {tap}"
        time.sleep(PORT_ATTACH_POLL_S)


def test_without_a_port_binding_a_forger_asking_first_is_answered(hv):
    """Control: proves the forger's path works, so the next test's 404 means something;
    then the stop hook parks the record and the same forger gets nothing."""
    xml = WEB1_XML.replace(b"web-1", b"ctl-1").replace(
        WEB1_NIC.mac.encode(), CONTROL_MAC.encode()).replace(b"vnet0", b"vnet2")
    with ApiClient(hv.api) as api:
        put = api.request("PUT", "/v1/instances/ctl-1", {
            "mac": CONTROL_MAC, "bridge": "br0", "hostname": "ctl-1"})
    assert put.status == 201, put.body
    status, body = hv.curl(hv.guests["control-forger"].ns, HOSTNAME)
    assert (status, body) == (200, "ctl-1")
    for operation in ("stopped", "release"):
        libvirtd_runs_hook(hv, "ctl-1", operation, xml)
    assert hv.curl(hv.guests["control-forger"].ns, HOSTNAME)[0] == 404


def test_the_hook_binds_the_tap_a_forger_asking_first_gets_nothing_the_qemu_guest_its_data(
        hv, tmp_path):
    missing = tiny_vm.missing_tools()
    if missing:
        pytest.skip("cannot boot a qemu guest: " + "; ".join(missing))
    libvirtd_runs_hook(hv, "web-1", "prepare", WEB1_XML)
    libvirt_creates_tap(hv, WEB1_NIC.port, WEB1_NIC.bridge)
    for operation in ("start", "started"):
        libvirtd_runs_hook(hv, "web-1", operation, WEB1_XML)

    forger = hv.guests["forger"].ns
    for path in (*GUEST_PATHS, HOSTNAME):
        status, body = hv.curl(forger, path)  # first, before the victim ever asked
        assert status == 404 and "web-1" not in body, (path, status, body)

    kernel = tiny_vm.find_kernel()
    console = tmp_path / "console.log"
    argv = tiny_vm.qemu_argv(kernel, tiny_vm.build_initramfs(tmp_path / "initramfs", kernel),
                             console, tap=WEB1_NIC.port, mac=WEB1_NIC.mac, addr=GUEST_ADDR,
                             paths=GUEST_PATHS)
    qemu = tiny_vm.boot(argv, lambda a, **kw: hv.topo.spawn(hv.ns, a, **kw),
                        GUEST_RUN_TIMEOUT_S)
    printed = console.read_text(errors="replace") if console.exists() else ""
    assert qemu.returncode == 0 and tiny_vm.GUEST_DONE in printed, (argv, printed)

    answers = tiny_vm.parse_console(printed)
    assert answers[INSTANCE_ID] == tiny_vm.Answer(200, "web-1"), printed
    user_data = answers[USER_DATA]
    assert user_data.status == 200, printed
    assert user_data.body.splitlines() == ["#cloud-config", "hostname: web-1"], printed
    assert answers[OPENSTACK_META].status == 200 and WEB1_UUID in answers[OPENSTACK_META].body

    assert hv.curl(forger, INSTANCE_ID)[0] == 404  # and still nothing after the guest asked
