"""The EC2 tree over loopback, checked value by value against the record."""

from __future__ import annotations

import json

import pytest

from tests.keys import ED25519, RSA
from tests.responder.conftest import GUEST_A, RECORD_A, RECORD_B, UNKNOWN_SOURCE
from transparent_md.responder.ec2 import VERSIONS

MD = "/latest/meta-data/"


def test_root_lists_every_version_cloud_init_probes(live):
    listed = live.get("/").body.decode().splitlines()
    assert listed == list(VERSIONS)
    for version in ("1.0", "2009-04-04", "2016-09-02", "2018-09-24", "2021-03-23", "latest"):
        assert version in listed


@pytest.mark.parametrize("version", ["1.0", "2009-04-04", "2016-09-02", "2021-03-23", "latest"])
def test_every_version_serves_the_same_tree(live, version):
    assert live.get(f"/{version}/meta-data/instance-id").body == b"i-aaaa"
    assert live.get(f"/{version}/meta-data/").body == live.get(MD).body


def test_unknown_version_is_404(live):
    assert live.get("/2099-01-01/meta-data/instance-id").status == 404


LEAVES = {
    "ami-id": "ami-00000000000000000",
    "ami-launch-index": "0",
    "ami-manifest-path": "(unknown)",
    "hostname": RECORD_A["hostname"],
    "instance-action": "none",
    "instance-id": RECORD_A["instance_id"],
    "instance-life-cycle": "on-demand",
    "instance-type": RECORD_A["instance_type"],
    "local-hostname": RECORD_A["hostname"],
    "local-ipv4": RECORD_A["ip"],
    "mac": RECORD_A["mac"],
    "placement/availability-zone": "eu-west-1a",
    "placement/region": "eu-west-1",
    "public-ipv4": RECORD_A["public_ipv4"],
    "reservation-id": "r-i-aaaa",
    "security-groups": "default\nweb",
    "services/domain": "amazonaws.com",
    "public-keys/0/openssh-key": f"{ED25519} alice\n",
    "public-keys/1/openssh-key": f"{RSA} bob\n",
    "block-device-mapping/ami": "/dev/vda",
}


@pytest.mark.parametrize("path,expected", sorted(LEAVES.items()))
def test_leaf_values(live, path, expected):
    response = live.get(MD + path)
    assert response.status == 200
    assert response.headers["content-type"] == "text/plain"
    assert response.body.decode() == expected


def test_meta_data_listing_marks_directories(live):
    listing = live.get(MD).body.decode().splitlines()
    for directory in ("block-device-mapping/", "network/", "placement/", "public-keys/",
                      "services/", "iam/"):
        assert directory in listing
    for leaf in ("ami-id", "instance-id", "hostname", "local-ipv4", "mac", "reservation-id"):
        assert leaf in listing


def test_public_keys_listing_is_index_equals_name(live):
    assert live.get(MD + "public-keys/").body == b"0=alice\n1=bob"
    assert live.get(MD + "public-keys/0/").body == b"openssh-key"


def test_network_interfaces_by_mac(live):
    mac = GUEST_A.mac
    assert live.get(MD + "network/interfaces/macs/").body == f"{mac}/".encode()
    base = f"{MD}network/interfaces/macs/{mac}/"
    assert live.get(base + "mac").body.decode() == mac
    assert live.get(base + "local-ipv4s").body == b"10.0.0.5"
    assert live.get(base + "device-number").body == b"0"
    assert live.get(base + "public-ipv4s").body == b"203.0.113.10"


def test_iam_info_and_credentials(live):
    assert live.get(MD + "iam/").body == b"info\nsecurity-credentials/"
    info = json.loads(live.get(MD + "iam/info").body)
    assert info["Code"] == "Success"
    assert info["InstanceProfileArn"].endswith(":instance-profile/alpha-role")
    assert live.get(MD + "iam/security-credentials/").body == b"alpha-role"
    response = live.get(MD + "iam/security-credentials/alpha-role")
    assert response.headers["content-type"] == "application/json"
    creds = json.loads(response.body)
    assert creds["AccessKeyId"] == "ASIAALPHA"
    assert creds["SecretAccessKey"] == "s3cr3t"
    assert creds["Token"] == "tok"
    assert creds["Expiration"] == "2099-01-01T00:00:00Z"


def test_no_iam_when_no_role(live):
    assert live.get(MD + "iam/info", source="127.0.0.3").status == 404
    assert "iam/" not in live.get(MD, source="127.0.0.3").body.decode().splitlines()


def test_user_data_and_its_absence(live):
    response = live.get("/latest/user-data")
    assert response.status == 200
    assert response.body.decode() == RECORD_A["user_data"]
    assert live.get("/latest/user-data", source="127.0.0.3").status == 404


def test_identity_document_region_is_zone_minus_letter(live):
    response = live.get("/latest/dynamic/instance-identity/document")
    assert response.headers["content-type"] == "application/json"
    document = json.loads(response.body)
    assert document["instanceId"] == "i-aaaa"
    assert document["availabilityZone"] == "eu-west-1a"
    assert document["region"] == "eu-west-1"
    assert document["privateIp"] == "10.0.0.5"
    assert document["instanceType"] == "m5.large"
    assert live.get("/latest/dynamic/").body == b"instance-identity/"


def test_tenants_with_the_same_ip_get_their_own_record(live):
    assert live.get(MD + "instance-id", source="127.0.0.2").body == b"i-aaaa"
    assert live.get(MD + "instance-id", source="127.0.0.3").body == b"i-bbbb"
    assert live.get(MD + "placement/region", source="127.0.0.3").body == b"us-east-1"
    assert RECORD_B["ip"] == RECORD_A["ip"]


def test_record_without_mac_serves_the_guest_mac(live):
    assert live.get(MD + "mac", source="127.0.0.3").body == b"52:54:00:00:00:0b"


def test_unknown_guest_gets_404_everywhere(live):
    for path in ("/", MD, MD + "instance-id", "/openstack", "/latest/user-data"):
        assert live.get(path, source=UNKNOWN_SOURCE).status == 404


def test_unknown_paths_are_404(live):
    for path in (MD + "nope", MD + "public-keys/7/openssh-key", "/latest/meta-data/../x",
                 "/latest/nope"):
        assert live.get(path).status == 404


def test_trailing_slash_and_query_are_tolerated(live):
    assert live.get(MD + "instance-id/").body == b"i-aaaa"
    assert live.get(MD + "instance-id?x=1").body == b"i-aaaa"
    assert live.get("/latest/meta-data").body == live.get(MD).body
