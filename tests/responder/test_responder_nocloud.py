"""The NoCloud seed over loopback: the four files, per guest, and nothing for strangers."""

from __future__ import annotations

import yaml

from tests.responder.conftest import GUEST_A, RECORD_A, UNKNOWN_SOURCE
from transparent_md.responder import nocloud

SEED = "/nocloud/"


def test_listing_names_the_four_files(live):
    assert live.get(SEED).body.decode().splitlines() == list(nocloud.FILES)
    assert live.get("/nocloud").body == live.get(SEED).body


def test_meta_data_is_the_guests_record(live):
    md = yaml.safe_load(live.get(SEED + "meta-data").body)
    assert md["instance-id"] == RECORD_A["instance_id"]
    assert md["local-hostname"] == "alpha"
    assert sorted(md["public-keys"]) == sorted(RECORD_A["ssh_keys"].values())


def test_user_data_and_vendor_data(live):
    assert live.get(SEED + "user-data").body == RECORD_A["user_data"].encode()
    vendor = live.get(SEED + "vendor-data")
    assert vendor.status == 200 and vendor.body.startswith(b"#cloud-config")


def test_network_config_matches_the_guest_mac(live):
    config = yaml.safe_load(live.get(SEED + "network-config").body)
    assert config["version"] == 2
    (nic,) = config["ethernets"].values()
    assert nic["match"]["macaddress"] == GUEST_A.mac and nic["dhcp4"] is True


def test_unknown_guest_and_unknown_file_get_404(live):
    assert live.get(SEED + "meta-data", source=UNKNOWN_SOURCE).status == 404
    assert live.get(SEED + "secrets").status == 404
    assert live.get("/nocloudx/meta-data").status == 404
