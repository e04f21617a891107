"""Real clients over loopback: cloud-init's own code and botocore (see tests/clients.py)."""

from __future__ import annotations

import os

import pytest

from tests import clients
from tests.keys import ED25519, RSA
from tests.responder.conftest import RECORD_A
from transparent_md.store import open_store, parse_record

needs_cloudinit = pytest.mark.skipif(
    not os.path.exists("/usr/lib/python3/dist-packages/cloudinit"),
    reason="Debian's cloud-init package is not installed")


def _check_ec2_crawl(crawled: dict) -> None:
    md = crawled["meta-data"]
    assert md["instance-id"] == "i-aaaa"
    assert md["hostname"] == "alpha"
    assert md["local-ipv4"] == "10.0.0.5"
    assert md["placement"]["availability-zone"] == "eu-west-1a"
    assert md["public-keys"] == {"alice": [f"{ED25519} alice"],
                                 "bob": [f"{RSA} bob"]}
    assert crawled["user-data"] == RECORD_A["user_data"]


@needs_cloudinit
def test_cloudinit_ec2_crawl_without_tokens(live):
    crawled = clients.cloudinit_ec2_crawl(live.base_url(), imdsv2=False)
    assert crawled["_token_used"] is False
    _check_ec2_crawl(crawled)


@needs_cloudinit
def test_cloudinit_ec2_crawl_with_imdsv2_tokens(live):
    store = open_store(live.store_path)
    store.update(parse_record({**RECORD_A, "imdsv2_required": True}))
    store.close()
    crawled = clients.cloudinit_ec2_crawl(live.base_url(), imdsv2=True)
    assert crawled["_token_used"] is True
    _check_ec2_crawl(crawled)
    identity = crawled["dynamic"]["instance-identity"]["document"]
    assert identity["region"] == "eu-west-1"


@needs_cloudinit
def test_cloudinit_openstack_reader(live):
    result = clients.cloudinit_openstack_read(live.base_url())
    assert result["metadata"]["uuid"]
    assert result["metadata"]["hostname"] == "alpha"
    assert result["metadata"]["public_keys"] == RECORD_A["ssh_keys"]
    assert result["userdata"] == RECORD_A["user_data"]
    assert result["vendordata"] == RECORD_A["vendor_data"]
    assert result["networkdata"]["links"][0]["ethernet_mac_address"] == RECORD_A["mac"]


def test_botocore_fetches_role_credentials_with_imdsv1_disabled(live):
    store = open_store(live.store_path)
    store.update(parse_record({**RECORD_A, "imdsv2_required": True}))
    store.close()
    creds = clients.botocore_role_credentials(live.base_url())
    assert creds["role_name"] == "alpha-role"
    assert creds["access_key"] == "ASIAALPHA"
    assert creds["secret_key"] == "s3cr3t"
    assert creds["token"] == "tok"
    assert creds["expiry_time"] == "2099-01-01T00:00:00Z"
