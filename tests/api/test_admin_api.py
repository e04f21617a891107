"""The admin API over a real unix socket, in-process (no root): every verb, ETags and
If-Match, merge patch, errors as JSON, idempotent DELETE, the socket's mode and its
refusal to share a path with a live server."""

from __future__ import annotations

import os
import socket
import stat
import threading

import pytest

from tests.keys import ED25519, ED25519_OTHER
from transparent_md.api.client import ApiClient
from transparent_md.api.server import MAX_BODY_BYTES, AdminServer
from transparent_md.errors import UserError
from transparent_md.store import open_store

MAC = "52:54:00:12:34:56"
RECORD = {"mac": MAC, "ip": "10.0.0.5", "bridge": "br0", "hostname": "web-1",
          "user_data": "#cloud-config\n"}
STATUS = {"version": "test", "bridges": ["br0"]}


@pytest.fixture
def api(tmp_path):
    store_path = str(tmp_path / "instances.db")
    server = AdminServer(str(tmp_path / "run" / "tmd.sock"), lambda: open_store(store_path),
                         lambda: STATUS)
    server.start()
    client = ApiClient(server.path)
    client.store_path = store_path
    yield client
    client.close()
    server.stop()


def stored(api, instance_id):
    store = open_store(api.store_path)
    try:
        return store.get(instance_id)
    finally:
        store.close()


def test_socket_is_private_and_removed_on_stop(tmp_path):
    path = str(tmp_path / "api.sock")
    server = AdminServer(path, lambda: open_store(str(tmp_path / "db")))
    server.start()
    mode = os.stat(path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    with pytest.raises(UserError, match="another process serves an admin API"):
        AdminServer(path, lambda: None)
    server.stop()
    assert not os.path.exists(path)


def test_a_stale_socket_from_a_crash_is_replaced(tmp_path):
    path = str(tmp_path / "api.sock")
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(path)  # bound, never listening: what a killed daemon leaves
    dead.close()
    server = AdminServer(path, lambda: open_store(str(tmp_path / "db")))
    server.start()
    try:
        with ApiClient(path) as client:
            assert client.request("GET", "/v1/instances").status == 200
    finally:
        server.stop()


def test_put_creates_then_replaces_with_a_new_etag(api):
    created = api.request("PUT", "/v1/instances/i-1", RECORD)
    assert created.status == 201, created.body
    assert created.body["mac"] == MAC and created.body["instance_id"] == "i-1"
    replaced = api.request("PUT", "/v1/instances/i-1", {**RECORD, "hostname": "web-2"})
    assert replaced.status == 200
    assert replaced.etag != created.etag
    got = api.request("GET", "/v1/instances/i-1")
    assert got.status == 200 and got.etag == replaced.etag
    assert got.body["hostname"] == "web-2" and "ip" in got.body
    assert stored(api, "i-1").hostname == "web-2"


def test_list_and_its_filters(api):
    api.request("PUT", "/v1/instances/i-1", RECORD)
    api.request("PUT", "/v1/instances/i-2", {"mac": "52:54:00:00:00:02", "bridge": "br1"})
    every = api.request("GET", "/v1/instances")
    assert [r["instance_id"] for r in every.body["instances"]] == ["i-1", "i-2"]
    assert set(every.body["revisions"]) == {"i-1", "i-2"}
    by_mac = api.request("GET", "/v1/instances?mac=52-54-00-12-34-56")
    assert [r["instance_id"] for r in by_mac.body["instances"]] == ["i-1"]
    by_bridge = api.request("GET", "/v1/instances?bridge=br1")
    assert [r["instance_id"] for r in by_bridge.body["instances"]] == ["i-2"]
    bad = api.request("GET", "/v1/instances?color=red")
    assert bad.status == 400 and bad.body["field"] == "color"


def test_if_match_makes_writes_conditional(api):
    first = api.request("PUT", "/v1/instances/i-1", RECORD)
    second = api.request("PATCH", "/v1/instances/i-1", {"hostname": "b"},
                         {"If-Match": first.etag})
    assert second.status == 200
    stale = api.request("PATCH", "/v1/instances/i-1", {"hostname": "c"},
                        {"If-Match": first.etag})
    assert stale.status == 412, stale.body
    assert stale.body["record"] == "i-1" and stale.headers["etag"] == second.etag
    assert api.request("PUT", "/v1/instances/i-1", RECORD, {"If-Match": first.etag}).status \
        == 412
    assert api.request("DELETE", "/v1/instances/i-1", None, {"If-Match": first.etag}).status \
        == 412
    assert stored(api, "i-1").hostname == "b"
    # If-None-Match: * creates only; If-Match: * replaces only.
    assert api.request("PUT", "/v1/instances/i-1", RECORD, {"If-None-Match": "*"}).status \
        == 412
    assert api.request("PUT", "/v1/instances/i-9", {"mac": "52:54:00:00:00:09"},
                       {"If-Match": "*"}).status == 412
    assert api.request("PUT", "/v1/instances/i-9", {"mac": "52:54:00:00:00:09"},
                       {"If-None-Match": "*"}).status == 201
    ok = api.request("DELETE", "/v1/instances/i-1", None, {"If-Match": second.etag})
    assert ok.status == 204 and stored(api, "i-1") is None
    assert api.request("GET", "/v1/instances/i-1", None,
                       {"If-Match": 'nonsense'}).status == 400


def test_merge_patch_follows_rfc_7396(api):
    api.request("PUT", "/v1/instances/i-1", {
        **RECORD, "ssh_keys": {"a": f"{ED25519} a", "b": f"{ED25519_OTHER} b"},
        "openstack": {"meta": {"role": "web", "tier": "1"}}})
    patched = api.request("PATCH", "/v1/instances/i-1", {
        "hostname": "renamed",                 # replaced
        "ip": None,                            # removed
        "ssh_keys": {"a": None},               # nested member removed, "b" kept
        "openstack": {"meta": {"tier": "2"}},  # nested merge
        "security-groups": ["web"],            # dashes as in import files
    }, {"Content-Type": "application/merge-patch+json"})
    assert patched.status == 200, patched.body
    record = patched.body
    assert record["hostname"] == "renamed" and "ip" not in record
    assert record["ssh_keys"] == {"b": f"{ED25519_OTHER} b"}
    assert record["openstack"]["meta"] == {"role": "web", "tier": "2"}
    assert record["security_groups"] == ["web"]
    # Setting user_data_base64 replaces user_data instead of clashing with it.
    swapped = api.request("PATCH", "/v1/instances/i-1", {"user_data_base64": "AAEC"})
    assert swapped.status == 200, swapped.body
    assert stored(api, "i-1").user_data == b"\x00\x01\x02"
    missing = api.request("PATCH", "/v1/instances/i-404", {"hostname": "x"})
    assert missing.status == 404 and missing.body["record"] == "i-404"


def test_validation_errors_are_json_with_the_import_messages(api):
    bad = api.request("PUT", "/v1/instances/i-1", {"mac": "nope", "launch_index": -1})
    assert bad.status == 422
    assert bad.body["record"] == "i-1" and bad.body["field"] == "mac"
    assert bad.body["error"] == ("record i-1, field 'mac': 'nope' is not a MAC address like "
                                 "52:54:00:12:34:56")
    assert [p["field"] for p in bad.body["problems"]] == ["mac", "launch_index"]
    unbound = api.request("PUT", "/v1/instances/i-1", {"ip": "10.0.0.9"})
    assert unbound.status == 422 and "neither a MAC nor a bridge/port" in unbound.body["error"]
    other_id = api.request("PUT", "/v1/instances/i-1", {**RECORD, "instance_id": "i-2"})
    assert other_id.status == 422 and other_id.body["field"] == "instance_id"
    no_body = api.request("PUT", "/v1/instances/i-1")
    assert no_body.status == 400 and no_body.body["error"] == "the request needs a JSON body"
    api.request("PUT", "/v1/instances/i-1", RECORD)
    clash = api.request("PUT", "/v1/instances/i-2", RECORD)
    assert clash.status == 409 and clash.body["record"] == "i-2"
    assert "would answer the same guest as record i-1" in clash.body["error"]
    assert stored(api, "i-2") is None


def test_body_that_is_not_json_is_400(tmp_path, api):
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(api.path)
    sock.sendall(b"PUT /v1/instances/i-1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                 b"Connection: close\r\n\r\n{nop}")
    reply = b""
    while chunk := sock.recv(65536):
        reply += chunk
    sock.close()
    assert reply.startswith(b"HTTP/1.1 400 ") and b'"error": "the body is not JSON' in reply


def test_oversized_body_is_refused_before_it_is_read(api):
    reply = api.request("PUT", "/v1/instances/i-1", {"x": "a" * (MAX_BODY_BYTES + 1)})
    assert reply.status == 413


def test_delete_is_idempotent(api):
    api.request("PUT", "/v1/instances/i-1", RECORD)
    assert api.request("DELETE", "/v1/instances/i-1").status == 204
    assert api.request("DELETE", "/v1/instances/i-1").status == 204
    assert api.request("GET", "/v1/instances/i-1").status == 404


def test_binding_resource_binds_to_a_link_and_parks(api):
    """PUT binds to the link that has the name now (`lo` exists in every namespace, as
    ifindex 1); DELETE parks; a name no link has is refused, never bound for later."""
    api.request("PUT", "/v1/instances/i-1", RECORD)
    bound = api.request("PUT", "/v1/instances/i-1/binding", {"port": "lo"})
    assert bound.status == 200 and bound.body == {
        "mac": MAC, "ip": "10.0.0.5", "bridge": "br0", "port": "lo", "port_ifindex": 1,
        "parked": False, "serves": "link lo#1"}
    assert (stored(api, "i-1").port, stored(api, "i-1").port_ifindex) == ("lo", 1)
    assert api.request("GET", "/v1/instances/i-1/binding").body["port"] == "lo"
    parked = api.request("DELETE", "/v1/instances/i-1/binding")
    assert parked.status == 200 and parked.body["parked"] is True
    assert parked.body["serves"] == "parked"
    assert stored(api, "i-1").parked and stored(api, "i-1").user_data
    assert api.request("PUT", "/v1/instances/i-1/binding", {"port": "lo"}).body[
        "serves"] == "link lo#1"  # bound again: served again
    missing = api.request("PUT", "/v1/instances/i-1/binding", {"port": "tmd-nolink0"})
    assert missing.status == 422 and "no link named 'tmd-nolink0'" in missing.body["error"]
    assert stored(api, "i-1").port_ifindex == 1  # the refused bind changed nothing
    # A record written with a port no link has is parked (and says so in its state).
    put = api.request("PUT", "/v1/instances/i-2", {**RECORD, "mac": "52:54:00:00:00:77",
                                                   "port": "tmd-nolink0"})
    assert put.status == 201 and put.body["parked"] is True
    assert api.request("PUT", "/v1/instances/i-1/binding", {"tap": "x"}).status == 400
    assert api.request("PUT", "/v1/instances/i-1/binding", {"port": "a/b"}).status == 422
    assert api.request("PUT", "/v1/instances/i-404/binding", {"port": "lo"}).status == 404


def test_batch_patch_lands_whole_or_not_at_all(api):
    api.request("PUT", "/v1/instances/old", {"mac": "52:54:00:00:00:01", "bridge": "br0"})
    done = api.request("PATCH", "/v1/instances", {
        "a": {"mac": "52:54:00:00:00:0a", "bridge": "br0"},
        # the MAC moves from a removed record to a new one in the same transaction
        "b": {"mac": "52:54:00:00:00:01", "bridge": "br0"},
        "old": None})
    assert done.status == 200, done.body
    assert done.body["created"] == ["a", "b"] and done.body["removed"] == ["old"]
    refused = api.request("PATCH", "/v1/instances", {
        "c": {"mac": "52:54:00:00:00:0c", "bridge": "br0"}, "d": {"mac": "bad"}})
    assert refused.status == 422 and refused.body["record"] == "d"
    assert stored(api, "c") is None


def test_status_and_unknown_resources(api):
    assert api.request("GET", "/v1/status").body == STATUS
    missing = api.request("GET", "/v2/instances")
    assert missing.status == 404 and "/v1/" in missing.body["error"]
    wrong = api.request("POST", "/v1/instances/i-1")
    assert wrong.status == 405 and wrong.headers["allow"] == "GET, PUT, PATCH, DELETE"


def test_concurrent_unconditional_patches_all_land(api):
    api.request("PUT", "/v1/instances/i-1", {**RECORD, "openstack": {"meta": {}}})
    errors = []

    def writer(n: int) -> None:
        with ApiClient(api.path) as client:
            for k in range(10):
                reply = client.request("PATCH", "/v1/instances/i-1",
                                       {"openstack": {"meta": {f"w{n}-{k}": "1"}}})
                if reply.status != 200:
                    errors.append(reply.body)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(stored(api, "i-1").openstack_meta) == 40


def test_secrets_matched_by_ip_alone_are_refused_with_the_reason(api):
    """Issue 20 item 4, through the API: PUT, PATCH and the batch PATCH refuse a record
    with secrets bound to no port and no MAC (422, field 'mac'); nothing is written."""
    ip_only = {"ip": "10.0.0.9", "bridge": "br0", "user_data": "#cloud-config\n"}
    put = api.request("PUT", "/v1/instances/i-ip", ip_only)
    assert put.status == 422 and put.body["field"] == "mac"
    assert "needs its MAC" in put.body["error"]
    assert api.request("PUT", "/v1/instances/i-1", RECORD).status == 201
    patched = api.request("PATCH", "/v1/instances/i-1", {"mac": None})
    assert patched.status == 422 and "needs its MAC" in patched.body["error"]
    batch = api.request("PATCH", "/v1/instances", {"i-ip": ip_only})
    assert batch.status == 422
    assert stored(api, "i-ip") is None and stored(api, "i-1").mac == MAC
