"""Issue 23, acceptance 2: on a host where bcc cannot be imported, `run --datapath auto`
runs the raw-socket datapath and says why; real Debian 12 cloud-init VMs on taps
hot-plugged after the daemon is up boot and configure themselves through it: one as
OpenStack (SMBIOS product "OpenStack Nova"), one as EC2 with IMDSv2 (an AWS-style
SMBIOS UUID and serial, so cloud-init knows it is on AWS and asks for a token first; the
record refuses token-less requests).

World: hypervisor namespace with br0; a router namespace on it (10.0.0.1) runs dnsmasq
for DHCP, as cloud images expect; the VMs' qemu runs in the hypervisor namespace, each
on its own tap. Both VMs boot at once (TCG where the CPU has no virtualisation).
"""

from __future__ import annotations

import pytest

from tests.bcc_hidden import env_without_bcc
from tests.vm.cloud_lab import Vm, start_dnsmasq
from tests.vm.cloud_vm import Smbios
from tests.vm.vm_world import MODULE_TIMEOUT_S, add_vm, assert_configured, boot_all, image_or_skip
from transparent_md.lab.hypervisor import Hypervisor

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.vm,
              pytest.mark.timeout(MODULE_TIMEOUT_S)]

OPENSTACK = Vm("os-raw-1", mac="52:54:00:23:00:01", tap="vm-os", ip="10.0.0.21")
EC2 = Vm("ec2-raw-2", mac="52:54:00:23:00:02", tap="vm-ec2", ip="10.0.0.22")
# cloud-init takes a VM for AWS when its SMBIOS UUID starts with "ec2" and equals its
# serial number (identify_aws); only then does it fetch an IMDSv2 token.
EC2_UUID = "ec2a1b2c-3d4e-4f60-8172-93a4b5c6d7e8"
SMBIOS = {
    OPENSTACK.name: Smbios(manufacturer="OpenStack Foundation", product="OpenStack Nova"),
    EC2.name: Smbios(manufacturer="Amazon EC2", product="t3.micro", serial=EC2_UUID,
                     uuid=EC2_UUID),
}


@pytest.fixture(scope="module")
def world(topology, tmp_path_factory):
    image = image_or_skip()
    tmp = tmp_path_factory.mktemp("vm-raw")
    hv = Hypervisor(topology)
    hv.bridge("br0")
    router = hv.router("router", bridge="br0", port="rtr", addr="10.0.0.1/24")
    start_dnsmasq(hv, router.ns, tmp, leases=[OPENSTACK, EC2],
                  dhcp4_range="10.0.0.100,10.0.0.199")
    hv.api = str(tmp / "api.sock")
    daemon = hv.start_daemon(["br0"], str(tmp / "instances.db"), ["--api", hv.api],
                             env=env_without_bcc(tmp), datapath="auto")
    hv.daemon_log = daemon.log()
    # Hot-plugged: the taps appear only now, after the daemon is up.
    add_vm(hv, hv.api, OPENSTACK, "br0", "raw")
    add_vm(hv, hv.api, EC2, "br0", "raw", imdsv2_required=True)
    hv.boots = boot_all(hv, tmp, image, [(vm, SMBIOS[vm.name]) for vm in (OPENSTACK, EC2)])
    yield hv
    daemon.stop()


def test_without_bcc_auto_picks_the_raw_datapath_and_says_why(world):
    log = world.daemon_log
    assert "datapath raw (auto: no tc program here" in log, log
    assert "bcc" in log.split("datapath raw (auto:")[1].splitlines()[0], log
    assert world.raw_ports() >= {OPENSTACK.tap, EC2.tap}


def test_a_debian_vm_on_a_hot_plugged_tap_configures_itself_as_openstack(world):
    assert_configured(world.boots[OPENSTACK.name], OPENSTACK, "DataSourceOpenStackLocal")


def test_a_debian_vm_on_a_hot_plugged_tap_configures_itself_as_ec2_with_imdsv2(world):
    report = assert_configured(world.boots[EC2.name], EC2, "DataSourceEc2Local")
    # cloud-init got a token (it asks for one only on AWS), and the record answers no
    # token-less request: everything it read came through IMDSv2.
    assert any("Read from http://169.254.169.254/latest/api/token (200" in line
               for line in report.log), report.log
