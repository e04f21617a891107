"""The GCE flavour over loopback: Google's header rules, listings, recursive JSON and text,
ETags, the access token, and nothing for strangers or for requests without the header."""

from __future__ import annotations

import json
import time

from tests.conftest import wait_for
from tests.responder.conftest import GUEST_A, RECORD_A, UNKNOWN_SOURCE, start_responder
from transparent_md.responder import gce
from transparent_md.responder.limits import ResponderLimits
from transparent_md.store import open_store, parse_record

GOOGLE = {"Metadata-Flavor": "Google"}
V1 = "/computeMetadata/v1/"


def ask(live, path: str, **kw):
    return live.get(path, headers={**GOOGLE, **kw.pop("headers", {})}, **kw)


def test_every_reply_carries_the_flavour_and_an_etag(live):
    for path in ("/", V1, V1 + "instance/id", V1 + "nope"):
        response = ask(live, path)
        assert response.headers["metadata-flavor"] == "Google", path
    assert ask(live, V1 + "instance/id").headers["etag"]


def test_without_the_header_or_through_a_proxy_it_is_403_and_nothing_leaks(live):
    for path in (V1 + "instance/id", V1 + "instance/attributes/user-data",
                 V1 + "instance/service-accounts/default/token"):
        refused = live.get(path)
        assert refused.status == 403 and b"alpha" not in refused.body
        proxied = ask(live, path, headers={"X-Forwarded-For": "10.0.0.9"})
        assert proxied.status == 403
    assert ask(live, V1 + "instance/id", headers={"Metadata-Flavor": "google"}).status == 403


def test_unknown_guest_gets_404(live):
    assert ask(live, V1 + "instance/id", source=UNKNOWN_SOURCE).status == 404


def test_leaves_and_listings(live):
    assert ask(live, "/").status == 200
    assert "instance/" in ask(live, V1).body.decode().splitlines()
    instance_id = ask(live, V1 + "instance/id").body.decode()
    assert instance_id.isdigit() and int(instance_id) == gce.numeric_id(RECORD_A["instance_id"])
    assert ask(live, V1 + "instance/name").body == b"alpha"
    assert ask(live, V1 + "instance/zone").body.decode().endswith("/zones/eu-west-1a")
    assert ask(live, V1 + "instance/machine-type").body.decode().endswith("/m5.large")
    assert ask(live, V1 + "instance/network-interfaces/0/mac").body.decode() == GUEST_A.mac
    assert ask(live, V1 + "instance/network-interfaces/0/ip").body == b"10.0.0.5"
    assert ask(live, V1 + "project/project-id").body == b"proj-a"
    listed = ask(live, V1 + "instance/").body.decode().splitlines()
    assert "attributes/" in listed and "id" in listed and "network-interfaces/" in listed


def test_attributes_carry_user_data_and_ssh_keys_as_user_key_lines(live):
    attributes = V1 + "instance/attributes/"
    assert ask(live, attributes + "user-data").body == RECORD_A["user_data"].encode()
    lines = ask(live, attributes + "ssh-keys").body.decode().splitlines()
    assert sorted(lines) == sorted(f"{u}:{k}" for u, k in RECORD_A["ssh_keys"].items())
    # What cloud-init's GCE datasource asks: keys as written, not camelCase.
    recursive = json.loads(ask(live, attributes + "?recursive=True").body)
    assert recursive["user-data"] == RECORD_A["user_data"]
    assert "ssh-keys" in recursive


def test_recursive_json_and_text(live):
    document = json.loads(ask(live, V1 + "instance/?recursive=true").body)
    assert document["networkInterfaces"][0]["mac"] == GUEST_A.mac
    assert document["machineType"].endswith("/m5.large")
    assert "ssh-keys" in document["attributes"]
    text = ask(live, V1 + "instance/network-interfaces/?recursive=true&alt=text").body.decode()
    assert f"0/mac {GUEST_A.mac}" in text.splitlines()


def test_the_etag_follows_the_value(live):
    first = ask(live, V1 + "instance/name")
    again = ask(live, V1 + "instance/name")
    other = ask(live, V1 + "instance/zone")
    assert first.headers["etag"] == again.headers["etag"] != other.headers["etag"]


def test_the_default_service_account_and_its_token(live):
    account = json.loads(ask(live, V1 + "instance/service-accounts/default/?recursive=true").body)
    assert account["email"] == "alpha-role@proj-a.iam.gserviceaccount.com"
    assert account["scopes"] == list(gce.DEFAULT_SCOPES)
    token = ask(live, V1 + "instance/service-accounts/default/token")
    assert token.headers["content-type"] == "application/json"
    body = json.loads(token.body)
    assert body["access_token"] == "tok" and body["token_type"] == "Bearer"
    assert body["expires_in"] > 0


# -- wait_for_change ----------------------------------------------------------------

NAME = V1 + "instance/name"


def test_a_long_poll_with_the_current_etag_is_answered_at_its_timeout_unchanged(live):
    current = ask(live, NAME).headers["etag"]
    started = time.monotonic()
    held = ask(live, f"{NAME}?wait_for_change=true&last_etag={current}&timeout_sec=1")
    waited = time.monotonic() - started
    assert held.status == 200 and held.headers["etag"] == current and held.body == b"alpha"
    assert waited >= 0.9, waited


def test_a_stale_etag_is_answered_at_once(live):
    started = time.monotonic()
    held = ask(live, f"{NAME}?wait_for_change=true&last_etag=0123456789abcdef&timeout_sec=30")
    assert held.body == b"alpha" and time.monotonic() - started < 5


def test_a_change_to_the_record_ends_the_long_poll(live):
    conn = live.connect()
    try:
        conn.send("GET", f"{NAME}?wait_for_change=true&timeout_sec=60", GOOGLE)
        time.sleep(0.3)  # the request is held by now (an early change only answers sooner)
        store = open_store(live.store_path)
        try:
            changed = dict(RECORD_A, hostname="alpha-2")
            store.put_many([parse_record(changed)])
        finally:
            store.close()
        changed_at = time.monotonic()
        answer = conn.read()
        assert time.monotonic() - changed_at < 1.0
        assert answer.body == b"alpha-2"
        # The connection keeps serving after a long poll.
        assert conn.request("GET", NAME, GOOGLE).body == b"alpha-2"
    finally:
        conn.close()


def test_long_polls_count_against_the_guests_connection_cap(tmp_path):
    cap = 3
    for live in start_responder(str(tmp_path / "i.db"), idle_timeout=30,
                                limits=ResponderLimits(max_conns_per_identity=cap)):
        held = []
        try:
            for _ in range(cap):
                conn = live.connect()
                conn.send("GET", f"{NAME}?wait_for_change=true&timeout_sec=30", GOOGLE)
                held.append(conn)
            polls = live.responder.state.long_polls
            assert wait_for(lambda: len(polls) == cap, 10)  # noqa: B023 - used at once
            extra = live.connect()
            extra.sock.settimeout(10)
            try:
                extra.send("GET", NAME, GOOGLE)
                assert extra.sock.recv(1) == b""  # refused at the cap: nothing answered
            except ConnectionResetError:
                pass
            finally:
                extra.close()
        finally:
            for conn in held:
                conn.close()


def test_a_records_own_gce_fields_win_over_the_derived_ones(tmp_path):
    record = dict(RECORD_A, gce={"project_id": "gp", "numeric_project_id": 42,
                                 "attributes": {"enable-oslogin": "false"}})
    view = gce.GceView(parse_record(record), GUEST_A.mac, "10.0.0.5")
    plain = gce.Query(b"")
    assert view.answer(b"project/project-id", plain).body == b"gp"
    assert view.answer(b"project/numeric-project-id", plain).body == b"42"
    assert view.answer(b"instance/zone", plain).body == b"projects/42/zones/eu-west-1a"
    assert view.answer(b"instance/attributes/enable-oslogin", plain).body == b"false"
