"""Official metadata clients in a guest namespace, through the tc datapath and the daemon.

Issue 10: the AWS SDK for JavaScript v3 (which sends `//latest/...`), botocore, Amazon's
`ec2-metadata` and Canonical's `ec2metadata` each read the guest's record, and a handful of
rows of the request-target table (tests/responder/path_table.py) go through the datapath
as raw request targets (curl --request-target sends them byte for byte).
"""

from __future__ import annotations

import sys

import pytest

from tests import clients, sdk_clients
from tests.conftest import write_records
from tests.responder import path_table
from transparent_md.lab.hypervisor import METADATA_URL, Hypervisor

pytestmark = pytest.mark.netns

RECORD = path_table.RECORD
IAM = RECORD["iam"]


@pytest.fixture(scope="module")
def guest(topology, tmp_path_factory):
    missing = sdk_clients.missing_tools()
    if missing:
        pytest.fail(f"run scripts/setup first: missing {', '.join(missing)}")
    hv = Hypervisor(topology)
    hv.bridge("br0")
    web = hv.guest("web", bridge="br0", port="pweb", addr=f"{path_table.IP}/24",
                   routes=["default via 10.0.0.1"], mac=path_table.MAC)
    store = str(tmp_path_factory.mktemp("sdk") / "instances.db")
    write_records(store, [RECORD])
    # --api none: no admin socket needed, and its default path is shared by the machine.
    daemon = hv.start_daemon(["br0"], store, ["--gateway", "br0=10.0.0.1", "--api", "none"])
    yield hv, web
    daemon.stop()


def test_aws_sdk_for_javascript_v3(guest):
    _, web = guest
    read = sdk_clients.aws_sdk_js(web.ns)
    assert read["instance-id"] == RECORD["instance_id"]
    assert read["local-ipv4"] == path_table.IP
    assert read["mac"] == path_table.MAC
    assert read["local-hostname"] == RECORD["hostname"]
    assert read["availability-zone"] == RECORD["availability_zone"]
    assert read["user-data"] == RECORD["user_data"]
    assert read["meta-data-listing"].encode() == path_table.META_DATA
    assert read["version-listing"].encode() == path_table.VERSION_LEVEL
    assert read["credentials"] == {
        "accessKeyId": IAM["access_key_id"], "secretAccessKey": IAM["secret_access_key"],
        "sessionToken": IAM["token"], "expiration": "2099-01-01T00:00:00.000Z",
    }


def test_botocore(guest):
    _, web = guest
    creds = clients.botocore_role_credentials(METADATA_URL, netns=web.ns)
    assert creds["role_name"] == IAM["role"]
    assert (creds["access_key"], creds["secret_key"], creds["token"]) == (
        IAM["access_key_id"], IAM["secret_access_key"], IAM["token"])
    fetched = clients.run_client(_BOTOCORE_REGION, METADATA_URL, python=sys.executable,
                                 netns=web.ns)
    assert fetched == {"region": "eu-west-1"}


# botocore's region fetcher reads `latest/meta-data/placement/availability-zone/`: a leaf
# with a trailing slash.
_BOTOCORE_REGION = r"""
import json, sys
from botocore.utils import InstanceMetadataRegionFetcher
fetcher = InstanceMetadataRegionFetcher(timeout=5, num_attempts=1, base_url=sys.argv[1])
print(json.dumps({"region": fetcher.retrieve_region()}))
"""


def test_amazon_ec2_metadata(guest):
    _, web = guest
    values = sdk_clients.amazon_ec2_metadata(web.ns, "-i", "-o", "-h", "-z", "-e")
    assert values["instance-id"] == RECORD["instance_id"]
    assert values["local-ipv4"] == path_table.IP
    assert values["local-hostname"] == RECORD["hostname"]
    assert values["placement"] == RECORD["availability_zone"]
    # -e reads `/latest//meta-data/reservation-id`: a double slash AWS answers.
    assert values["reservation-id"].startswith("r-")
    user_data = sdk_clients.amazon_ec2_metadata_raw(web.ns, "-d")
    assert user_data == "user-data: " + RECORD["user_data"]
    keys = sdk_clients.amazon_ec2_metadata_raw(web.ns, "-u")
    assert "keyname:alice\nindex:0\nformat:openssh-key\n" in keys
    assert path_table.SSH_KEY in keys


def test_canonical_ec2metadata(guest):
    _, web = guest
    read = sdk_clients.canonical_ec2metadata
    assert read(web.ns, "instance-id") == RECORD["instance_id"]
    assert read(web.ns, "local-ipv4") == path_table.IP
    assert read(web.ns, "local-hostname") == RECORD["hostname"]
    assert read(web.ns, "availability-zone") == RECORD["availability_zone"]
    assert read(web.ns, "mac") == path_table.MAC
    # It lists `meta-data/public-keys` without a trailing slash, then reads key 0.
    assert read(web.ns, "public-keys") == str([path_table.SSH_KEY])
    assert read(web.ns, "user-data") == RECORD["user_data"].rstrip("\n")


@pytest.mark.parametrize("target", path_table.THROUGH_DATAPATH)
def test_request_targets_through_the_datapath(guest, target):
    hv, web = guest
    status, body = path_table.expected(target)
    got = hv.curl(web.ns, "/", extra=["--path-as-is", "--request-target", target])
    assert got[0] == status
    if body is not None:
        assert got[1] == body.decode()
