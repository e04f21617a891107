"""The GCE flavour over loopback: Google's header rules, listings, recursive JSON and text,
ETags, the access token, and nothing for strangers or for requests without the header."""

from __future__ import annotations

import json

from tests.responder.conftest import GUEST_A, RECORD_A, UNKNOWN_SOURCE
from transparent_md.responder import gce

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
