"""Real metadata clients inside guest namespaces, through the tc datapath and the daemon.

cloud-init's own EC2 and OpenStack code (Debian's package, /usr/bin/python3) and
botocore read 169.254.169.254 exactly as a booting guest would; the records are
imported with the real `transparent-md instance import`.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml

from tests import clients
from transparent_md.lab.hypervisor import METADATA_URL, Hypervisor
from transparent_md.process import stop_process

pytestmark = pytest.mark.netns

USER_DATA = "#cloud-config\nhostname: web-1\n"
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOqj alice@example"


def records(web_mac: str, locked_mac: str) -> list[dict]:
    return [
        {
            "instance_id": "i-0web00000000001", "mac": web_mac, "ip": "10.0.0.5",
            "bridge": "br0", "hostname": "web-1", "availability_zone": "eu-west-1a",
            "instance_type": "m5.large", "ssh_keys": {"alice": SSH_KEY},
            "user_data": USER_DATA, "vendor_data": {"cloud-init": "#cloud-config\n"},
            "openstack": {"uuid": "0b6b7a4e-8e2f-4c59-9a43-1f2d3e4c5b6a",
                          "project_id": "6f1d2c3b", "meta": {"role": "web"}},
        },
        {
            "instance_id": "i-0locked00000001", "mac": locked_mac, "hostname": "locked",
            "availability_zone": "us-east-2c", "imdsv2_required": True,
            "iam": {"role": "app-role", "access_key_id": "ASIALOCKED",
                    "secret_access_key": "s3cr3t", "token": "tok",
                    "expiration": "2099-01-01T00:00:00Z"},
        },
    ]


@pytest.fixture(scope="module")
def world(topology, tmp_path_factory):
    hv = Hypervisor(topology)
    hv.bridge("br0")
    web = hv.guest("web", bridge="br0", port="pweb", addr="10.0.0.5/24",
                   routes=["default via 10.0.0.1"])
    locked = hv.guest("locked", bridge="br0", port="plocked", addr="10.0.0.6/24",
                      routes=["default via 10.0.0.1"])
    tmp = tmp_path_factory.mktemp("clients")
    store = str(tmp / "instances.db")
    (tmp / "instances.yaml").write_text(yaml.safe_dump(records(web.mac, locked.mac)))
    imported = subprocess.run(
        [sys.executable, "-m", "transparent_md", "instance", "import",
         str(tmp / "instances.yaml"), "--store", store], capture_output=True, text=True)
    assert imported.returncode == 0, imported.stderr
    daemon = hv.start_daemon(["br0"], store, ["--gateway", "br0=10.0.0.1"])
    yield hv, web, locked
    daemon.stop()


def check_ec2(crawled: dict) -> None:
    md = crawled["meta-data"]
    assert md["instance-id"] == "i-0web00000000001"
    assert md["hostname"] == "web-1"
    assert md["local-ipv4"] == "10.0.0.5"
    assert md["instance-type"] == "m5.large"
    assert md["placement"]["availability-zone"] == "eu-west-1a"
    assert md["public-keys"] == {"alice": [SSH_KEY]}
    assert crawled["user-data"] == USER_DATA


def test_cloudinit_ec2_crawl_without_tokens(world):
    hv, web, _ = world
    crawled = clients.cloudinit_ec2_crawl(METADATA_URL, imdsv2=False, netns=web.ns)
    assert crawled["_token_used"] is False
    check_ec2(crawled)
    assert crawled["meta-data"]["mac"] == web.mac


def test_cloudinit_ec2_crawl_with_imdsv2_tokens(world):
    hv, web, _ = world
    crawled = clients.cloudinit_ec2_crawl(METADATA_URL, imdsv2=True, netns=web.ns)
    assert crawled["_token_used"] is True
    check_ec2(crawled)
    document = crawled["dynamic"]["instance-identity"]["document"]
    assert document["instanceId"] == "i-0web00000000001"
    assert document["region"] == "eu-west-1"


def test_cloudinit_openstack_reader(world):
    hv, web, _ = world
    result = clients.cloudinit_openstack_read(METADATA_URL, netns=web.ns)
    meta = result["metadata"]
    assert meta["uuid"] == "0b6b7a4e-8e2f-4c59-9a43-1f2d3e4c5b6a"
    assert meta["hostname"] == "web-1"
    assert meta["public_keys"] == {"alice": SSH_KEY}
    assert meta["meta"] == {"role": "web"}
    assert result["userdata"] == USER_DATA
    assert result["networkdata"]["links"][0]["ethernet_mac_address"] == web.mac


def test_cloudinit_nocloud_seed(world):
    hv, web, locked = world
    seeded = clients.cloudinit_nocloud_read(METADATA_URL + "/nocloud/", netns=web.ns)
    assert seeded["meta-data"] == {"instance-id": "i-0web00000000001",
                                   "local-hostname": "web-1", "public-keys": [SSH_KEY]}
    assert seeded["user-data"] == USER_DATA
    # A guest without user-data still gets the file NoCloud insists on.
    other = clients.cloudinit_nocloud_read(METADATA_URL + "/nocloud/", netns=locked.ns)
    assert other["meta-data"]["instance-id"] == "i-0locked00000001"
    assert other["user-data"].startswith("#cloud-config")


def test_google_auth_compute_engine_credentials(world):
    hv, _, locked = world
    got = clients.google_auth_compute_engine("169.254.169.254", netns=locked.ns)
    assert got["ping"] is True
    assert got["token"] == "tok"
    assert got["email"] == "app-role@project-000000000000.iam.gserviceaccount.com"
    assert got["project"] == "project-000000000000"
    assert got["expiry"] >= "2098-12-31"  # now + expires_in, less google-auth's margin


def test_botocore_role_credentials_with_imdsv1_disabled(world):
    hv, _, locked = world
    # IMDSv1 is refused for this instance: the token-less GET gets 401 ...
    assert hv.curl(locked.ns, "/latest/meta-data/instance-id")[0] == 401
    # ... and botocore, which fetches a token first, still gets the role's credentials.
    creds = clients.botocore_role_credentials(METADATA_URL, netns=locked.ns)
    assert creds["role_name"] == "app-role"
    assert creds["access_key"] == "ASIALOCKED"
    assert creds["secret_key"] == "s3cr3t"
    assert creds["token"] == "tok"


def test_token_reply_leaves_with_hop_limit_one_through_the_datapath(world):
    """The token response reaches the guest with IP TTL 1: no router hop in between."""
    hv, web, _ = world
    capture = hv.topo.spawn(web.ns, ["tcpdump", "-i", "eth0", "--immediate-mode", "-n", "-v",
                                     "-l", "-c", "20", "src host 169.254.169.254"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in capture.stderr:
        if "listening on" in line:
            break
    res = hv.topo.sh(web.ns, ["curl", "-sS", "-m", "5", "-X", "PUT",
                              "-H", "X-aws-ec2-metadata-token-ttl-seconds: 60",
                              f"{METADATA_URL}/latest/api/token"])
    assert res.returncode == 0 and res.stdout
    # Read until the responder's FIN: every segment of the reply has been seen by then.
    dump = []
    for line in capture.stdout:
        dump.append(line)
        if "Flags [F" in line:
            break
    stop_process(capture)
    text = "".join(dump)
    # tcpdump -v prints the IP header line, then the TCP line ending in "length N".
    pairs = [(dump[i], dump[i + 1]) for i in range(len(dump) - 1) if " ttl " in dump[i]]
    carrying = [ip for ip, tcp in pairs if re.search(r", length [1-9]\d*", tcp)]
    assert carrying and all("ttl 1," in ip for ip in carrying), text
