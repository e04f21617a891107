"""The OpenStack tree over loopback, including the write-once password."""

from __future__ import annotations

import json

from tests.responder.conftest import GUEST_A, RECORD_A
from transparent_md.responder.openstack import VERSIONS
from transparent_md.store import open_store

OS = "/openstack/latest/"


def test_versions_listing(live):
    listed = live.get("/openstack").body.decode().splitlines()
    assert listed == list(VERSIONS)
    assert live.get("/openstack/").body == live.get("/openstack").body


def test_version_listing_names_the_files(live):
    files = live.get(OS).body.decode().splitlines()
    for name in ("meta_data.json", "network_data.json", "password", "user_data",
                 "vendor_data.json", "vendor_data2.json"):
        assert name in files


def test_meta_data_json(live):
    for version in ("latest", "2012-08-10", "2018-08-27"):
        response = live.get(f"/openstack/{version}/meta_data.json")
        assert response.status == 200
        assert response.headers["content-type"] == "application/json"
        md = json.loads(response.body)
        assert md["name"] == "alpha"
        assert md["hostname"] == "alpha"
        assert md["availability_zone"] == "eu-west-1a"
        assert md["public_keys"] == RECORD_A["ssh_keys"]
        assert [k["name"] for k in md["keys"]] == ["alice", "bob"]
        assert md["launch_index"] == 0
        assert md["project_id"] == "proj-a"
        assert md["meta"] == {"role": "web"}
        assert len(md["uuid"]) == 36


def test_network_data_json_has_the_guest_mac(live):
    nd = json.loads(live.get(OS + "network_data.json").body)
    assert nd["links"][0]["ethernet_mac_address"] == GUEST_A.mac
    assert nd["networks"][0]["link"] == nd["links"][0]["id"]
    assert "services" in nd


def test_user_and_vendor_data(live):
    assert live.get(OS + "user_data").body.decode() == RECORD_A["user_data"]
    assert json.loads(live.get(OS + "vendor_data.json").body) == RECORD_A["vendor_data"]
    assert json.loads(live.get(OS + "vendor_data2.json").body) == {
        "static": RECORD_A["vendor_data"]}
    assert live.get(OS + "user_data", source="127.0.0.3").status == 404
    assert json.loads(live.get(OS + "vendor_data.json", source="127.0.0.3").body) == {}


def test_unknown_openstack_paths_are_404(live):
    for path in ("/openstack/1999-01-01/meta_data.json", OS + "nope.json", "/openstackx"):
        assert live.get(path).status == 404


def post_password(live, body: bytes, source="127.0.0.2"):
    conn = live.connect(source)
    try:
        return conn.request("POST", OS + "password", body=body)
    finally:
        conn.close()


def test_password_post_once_then_409_and_persisted(live):
    assert live.get(OS + "password").body == b""
    assert post_password(live, b"s3cret-blob").status == 200
    assert live.get(OS + "password").body == b"s3cret-blob"
    assert post_password(live, b"other").status == 409
    assert live.get(OS + "password").body == b"s3cret-blob"
    # Another instance is unaffected, and the store (another connection) has it.
    assert live.get(OS + "password", source="127.0.0.3").body == b""
    other = open_store(live.store_path)
    assert other.password("i-aaaa") == "s3cret-blob"
    other.close()


def test_password_over_255_bytes_is_refused(live):
    assert post_password(live, b"x" * 256).status == 400
    assert live.get(OS + "password").body == b""
    assert post_password(live, b"x" * 255).status == 200


def test_post_elsewhere_is_405(live):
    conn = live.connect()
    assert conn.request("POST", OS + "meta_data.json", body=b"x").status == 405
    conn.close()


def test_password_set_by_another_process_is_served_at_once(live):
    # Another responder process (a --workers sibling) takes the POST: no store change is
    # stamped for it, yet this process must serve the new password on the next GET.
    assert live.get(OS + "password").body == b""
    writer = open_store(live.store_path)
    writer.set_password_once("i-aaaa", "from-a-sibling")
    writer.close()
    assert live.get(OS + "password").body == b"from-a-sibling"
    assert live.get("/openstack/2018-08-27/password").body == b"from-a-sibling"


def test_password_named_paths_outside_the_openstack_tree_are_not_passwords(live):
    for path in ("/xxxxxxxxx/latest/password", "/latest/meta-data/password",
                 "/openstack/1999-01-01/password"):
        assert live.get(path).status == 404


def test_a_record_matched_by_ip_alone_takes_no_password(live):
    """Guest B's record has no MAC and no port: any guest on br1 that adds 10.0.0.5 is
    answered with it, so a password posted there would be theirs to read: 403."""
    assert post_password(live, b"b-secret", source="127.0.0.3").status == 403
    assert live.get(OS + "password", source="127.0.0.3").body == b""
    other = open_store(live.store_path)
    assert other.password("i-bbbb") is None
