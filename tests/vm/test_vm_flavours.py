"""Real Debian 12 cloud-init VMs on the tc datapath, one per flavour cloud-init detects
by itself (nothing in the image names a cloud; SMBIOS does, as hypervisors do):

- issue 25, acceptance 2: GCE (SMBIOS product "Google Compute Engine"), its metadata
  name resolved to 169.254.169.254 by the lab's DHCP/DNS server;
- issue 25, acceptance 3: NoCloud over HTTP (SMBIOS serial
  `ds=nocloud-net;s=http://169.254.169.254/nocloud/`);
- issue 24, acceptance 3: EC2 (AWS-style SMBIOS UUID and serial) on an IPv6-only network
  whose router namespace sends router advertisements: its metadata is at
  http://[fd00:ec2::254]; and the same EC2 image on a dual-stack network beside it.

World: hypervisor namespace; br0 dual-stack, its router namespace (10.0.0.1,
fd00:1::1) runs dnsmasq for DHCPv4, DNS and router advertisements; br1 IPv6-only, its
router namespace (fd00:2::1) runs dnsmasq for router advertisements and DNS only. All
VMs boot at once, each on a tap hot-plugged after the daemon is up, each bound to it.
"""

from __future__ import annotations

import pytest

from tests.vm.cloud_lab import METADATA_IP, METADATA_NAME, Vm, slaac_address, start_dnsmasq
from tests.vm.cloud_vm import Smbios
from tests.vm.vm_world import MODULE_TIMEOUT_S, add_vm, assert_configured, boot_all, image_or_skip
from transparent_md.lab.hypervisor import Hypervisor

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.vm,
              pytest.mark.timeout(MODULE_TIMEOUT_S)]

DUAL_PREFIX = "fd00:1::"
V6_ONLY_PREFIX = "fd00:2::"
GCE = Vm("gce-vm-1", mac="52:54:00:25:00:02", tap="vm-gce", ip="10.0.0.32")
NOCLOUD = Vm("nocloud-vm-1", mac="52:54:00:25:00:03", tap="vm-nocloud", ip="10.0.0.33")
EC2_DUAL = Vm("ec2-dual-1", mac="52:54:00:24:00:01", tap="vm-ec2-dual", ip="10.0.0.31",
              ip6="fd00:1::31")
EC2_V6 = Vm("ec2-v6-only-1", mac="52:54:00:24:00:02", tap="vm-ec2-v6")
NOCLOUD_SEED = "ds=nocloud-net;s=http://169.254.169.254/nocloud/"
GCE_PROJECT = "tmd-lab-project"


def aws_smbios(uuid: str) -> Smbios:
    """What makes cloud-init take a VM for AWS (identify_aws): a UUID starting "ec2"
    that equals the serial number. It then uses IMDSv2 and Ec2's own network config."""
    return Smbios(manufacturer="Amazon EC2", product="t3.micro", serial=uuid, uuid=uuid)


SMBIOS = {
    GCE.name: Smbios(manufacturer="Google", product="Google Compute Engine"),
    NOCLOUD.name: Smbios(serial=NOCLOUD_SEED),
    EC2_DUAL.name: aws_smbios("ec2d0a1b-2c3d-4e5f-8a6b-7c8d9e0f1a2b"),
    EC2_V6.name: aws_smbios("ec2e0a1b-2c3d-4e5f-8a6b-7c8d9e0f1a2c"),
}


@pytest.fixture(scope="module")
def world(topology, tmp_path_factory):
    image = image_or_skip()
    tmp = tmp_path_factory.mktemp("vm-flavours")
    hv = Hypervisor(topology)
    for bridge in ("br0", "br1"):
        hv.bridge(bridge)
    dual = hv.router("router", bridge="br0", port="rtr0", addr="10.0.0.1/24")
    hv.topo.ip(dual.ns, f"addr add {DUAL_PREFIX}1/64 dev eth0")
    v6 = hv.router("router6", bridge="br1", port="rtr1", addr=None)
    hv.topo.ip(v6.ns, f"addr add {V6_ONLY_PREFIX}1/64 dev eth0")
    for router in (dual, v6):  # a router advertises itself as the default router
        hv.topo.sh(router.ns, ["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"], check=True)
    hv.dns_log = start_dnsmasq(hv, dual.ns, tmp, leases=[GCE, NOCLOUD, EC2_DUAL],
                  dhcp4_range="10.0.0.100,10.0.0.199", ra_prefix=DUAL_PREFIX,
                  dhcp6_range="fd00:1::100,fd00:1::1ff")
    start_dnsmasq(hv, v6.ns, tmp, ra_prefix=V6_ONLY_PREFIX)
    hv.api = str(tmp / "api.sock")
    daemon = hv.start_daemon(["br0", "br1"], str(tmp / "instances.db"), ["--api", hv.api])
    add_vm(hv, hv.api, GCE, "br0", "tc", gce={"project_id": GCE_PROJECT})
    add_vm(hv, hv.api, NOCLOUD, "br0", "tc")
    add_vm(hv, hv.api, EC2_DUAL, "br0", "tc", imdsv2_required=True,
           ipv6=[slaac_address(DUAL_PREFIX, EC2_DUAL.mac), EC2_DUAL.ip6])
    add_vm(hv, hv.api, EC2_V6, "br1", "tc", imdsv2_required=True,
           ipv6=[slaac_address(V6_ONLY_PREFIX, EC2_V6.mac)])
    hv.boots = boot_all(hv, tmp, image, [(vm, SMBIOS[vm.name])
                                         for vm in (GCE, NOCLOUD, EC2_DUAL, EC2_V6)])
    yield hv
    daemon.stop()


def test_a_debian_vm_booted_as_gce_configures_itself_from_the_gce_flavour(world):
    """Its pre-network stage cannot resolve metadata.google.internal (no DNS yet); its
    network stage asks the lab's DNS server, which answers 169.254.169.254."""
    report = assert_configured(world.boots[GCE.name], GCE, "DataSourceGCE")
    assert report.datasource == "DataSourceGCE", report.datasource
    asked = world.dns_log.read_text()
    assert f"query[A] {METADATA_NAME} from {GCE.ip}" in asked, asked
    assert f"{METADATA_NAME} is {METADATA_IP}" in asked, asked


def test_a_debian_vm_told_nocloud_net_by_smbios_configures_itself_from_nocloud(world):
    report = assert_configured(world.boots[NOCLOUD.name], NOCLOUD, "DataSourceNoCloudNet")
    assert "http://169.254.169.254/nocloud/" in report.datasource, report.datasource


def test_an_ipv6_only_debian_vm_finds_its_ec2_metadata_at_fd00_ec2_254(world):
    """cloud-init 22.4 first tries in its pre-network stage, where it needs a DHCPv4 lease
    (EphemeralDHCPv4) and gets none; its network stage then finds the service at the
    IPv6 address, over the address and default route the router advertised."""
    report = assert_configured(world.boots[EC2_V6.name], EC2_V6, "DataSourceEc2")
    assert report.datasource == "DataSourceEc2", report.datasource  # not ...Local
    assert not any("inet " in line for line in report.addresses), report.addresses
    assert any(slaac_address(V6_ONLY_PREFIX, EC2_V6.mac) in line
               for line in report.addresses), report.addresses
    assert any("Using metadata source: 'http://[fd00:ec2::254]'" in line
               for line in report.log), report.log


def test_a_dual_stack_debian_vm_configures_itself_as_ec2(world):
    report = assert_configured(world.boots[EC2_DUAL.name], EC2_DUAL, "DataSourceEc2Local")
    assert any(slaac_address(DUAL_PREFIX, EC2_DUAL.mac) in line
               for line in report.addresses), report.addresses
