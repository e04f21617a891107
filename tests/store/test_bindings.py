"""Port bindings name links, parked records serve nobody, secrets need a MAC or a port:
the rules every writer shares, and store files from before them. No root needed (`lo`
is a link of every namespace, ifindex 1)."""

from __future__ import annotations

import dataclasses
import json
import sqlite3

import pytest

from transparent_md.errors import UserError
from transparent_md.identity import Guest
from transparent_md.store import RecordError, open_store, parse_record
from transparent_md.store.links import bind_link
from transparent_md.store.policy import exposure_warning, serving

MAC = "52:54:00:00:00:01"
IAM = {"role": "r", "access_key_id": "AKIA", "secret_access_key": "S", "token": "T",
       "expiration": "2030-01-01T00:00:00Z"}


def guest(port="lo", ifindex=1, mac=MAC, ip="10.0.0.5", bridge="br0") -> Guest:
    return Guest(bridge=bridge, port=port, ifindex=ifindex, mac=mac, ip=ip)


def record(**fields):
    return parse_record({"instance_id": "i-1", "ip": "10.0.0.5", **fields})


# -- the rules -------------------------------------------------------------------------

@pytest.mark.parametrize("fields", [
    {"bridge": "br0", "iam": IAM},
    {"bridge": "br0", "user_data": "#cloud-config\n"},
])
def test_secrets_served_without_a_port_need_a_mac(fields):
    with pytest.raises(RecordError) as caught:
        record(**fields)
    assert caught.value.field == "mac"
    assert "needs its MAC" in caught.value.message
    assert "adds the IP to its interface, keeping its own MAC" in caught.value.message


def test_secrets_are_allowed_with_a_mac_a_port_or_parked():
    assert record(mac=MAC, bridge="br0", iam=IAM).iam
    assert record(port="lo", port_ifindex=1, iam=IAM).iam
    assert record(bridge="br0", parked=True, iam=IAM).parked  # serves nobody: no risk
    assert record(bridge="br0").ip  # no secrets: IP and bridge are enough


def test_a_link_without_a_port_is_refused():
    with pytest.raises(RecordError, match="give the port too"):
        record(mac=MAC, port_ifindex=4)


def test_the_stores_refuse_what_the_parser_refuses(tmp_path):
    """A writer that builds records itself still meets the rule, at the store."""
    loose = dataclasses.replace(record(mac=MAC, bridge="br0", iam=IAM), mac=None)
    store = open_store(str(tmp_path / "i.db"))
    with pytest.raises(UserError, match="needs its MAC"):
        store.put_many([loose])


# -- links -----------------------------------------------------------------------------

def test_a_binding_names_the_link_that_has_the_name_now():
    bound = bind_link(record(mac=MAC, port="lo"))
    assert (bound.port, bound.port_ifindex) == ("lo", 1)
    with pytest.raises(RecordError, match="no link named 'tmd-nolink0'"):
        bind_link(record(mac=MAC, port="tmd-nolink0"))
    parked = bind_link(record(mac=MAC, port="tmd-nolink0"), park_missing=True)
    assert parked.parked and parked.port_ifindex is None


def test_writing_the_same_port_again_keeps_the_link_it_had():
    """A record written again with the port it had keeps its link, even if the name now
    belongs to another (a gone link serves nobody): it never moves to a newcomer."""
    stored = record(mac=MAC, port="lo", port_ifindex=4242)
    again = bind_link(record(mac=MAC, port="lo"), stored)
    assert again.port_ifindex == 4242
    moved = bind_link(record(mac=MAC, port="lo"), record(mac=MAC, port="eth9",
                                                        port_ifindex=7))
    assert moved.port_ifindex == 1  # another port: looked up now
    parked = record(mac=MAC, port="tmd-nolink0", parked=True)
    assert bind_link(parked) == parked  # parked: not looked up, not refused


def test_matching_compares_the_link_and_skips_parked_records(tmp_path):
    store = open_store(str(tmp_path / "i.db"))
    store.put_many([
        parse_record({"instance_id": "bound", "mac": MAC, "port": "vnet0",
                      "port_ifindex": 7, "iam": IAM}),
        parse_record({"instance_id": "parked", "mac": "52:54:00:00:00:02", "bridge": "br0",
                      "parked": True, "iam": IAM}),
    ])
    snap = store.snapshot()
    assert snap.match(guest("vnet0", 7)).instance_id == "bound"
    assert snap.match(guest("vnet0", 8)) is None  # vnet0 deleted and made again
    assert snap.match(guest("vnet1", 7)) is None
    assert snap.match(guest("vnet0", 7, mac="52:54:00:00:00:02")) is None
    assert snap.match(guest("p", 3, mac="52:54:00:00:00:02")) is None


def test_serving_says_who_a_record_answers():
    assert serving(record(mac=MAC, port="lo", port_ifindex=1)) == "link lo#1"
    assert serving(record(mac=MAC, port="lo")).startswith("nobody")
    assert serving(record(mac=MAC, bridge="br0")) == "mac+bridge"
    assert serving(record(mac=MAC)) == "mac"
    assert serving(record(bridge="br0")) == "ip+bridge"
    assert serving(record(mac=MAC, bridge="br0", parked=True)) == "parked"


def test_warnings_say_what_a_neighbour_needs():
    on_bridge = exposure_warning(record(mac=MAC, bridge="br0", iam=IAM))
    assert on_bridge is not None
    assert ("record i-1 carries IAM credentials and is bound to its MAC, not to a port: a "
            f"guest on bridge br0 that sends from MAC {MAC} and IP 10.0.0.5 reads them "
            "whenever it asks while no port holds that MAC's lock") in on_bridge
    anywhere = exposure_warning(record(mac=MAC, user_data="x"))
    assert anywhere is not None and "a guest on any bridge served" in anywhere
    assert exposure_warning(record(mac=MAC, port="lo", port_ifindex=1, iam=IAM)) is None
    assert exposure_warning(record(mac=MAC, bridge="br0", parked=True, iam=IAM)) is None
    assert exposure_warning(record(mac=MAC, bridge="br0")) is None


# -- store files from before links and parking -----------------------------------------

OLD_SCHEMA = """
CREATE TABLE instances (instance_id TEXT PRIMARY KEY, record TEXT NOT NULL,
    revision INTEGER NOT NULL, password TEXT, mac TEXT, ip TEXT, bridge TEXT, port TEXT);
CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO counters VALUES ('revision', 3);
CREATE INDEX instances_binding ON instances (instance_id, revision, mac, ip, bridge, port);
"""


def test_an_older_store_file_serves_no_binding_by_name_and_no_secrets_by_ip(tmp_path, caplog):
    """A port binding written by name only cannot tell its link from a newcomer's: it
    serves nobody until bound again. A record with secrets matched by IP alone (accepted
    before) is parked. Records that were fine stay served."""
    path = str(tmp_path / "old.db")
    db = sqlite3.connect(path)
    db.executescript(OLD_SCHEMA)
    rows = [
        ({"instance_id": "by-name", "mac": MAC, "port": "vnet0", "iam": IAM},
         (MAC, None, None, "vnet0")),
        ({"instance_id": "ip-secrets", "ip": "10.0.0.9", "bridge": "br0", "iam": IAM},
         (None, "10.0.0.9", "br0", None)),
        ({"instance_id": "fine", "mac": "52:54:00:00:00:03", "bridge": "br0"},
         ("52:54:00:00:00:03", None, "br0", None)),
    ]
    for revision, (raw, columns) in enumerate(rows, start=1):
        db.execute("INSERT INTO instances VALUES (?, ?, ?, NULL, ?, ?, ?, ?)",
                   (raw["instance_id"], json.dumps(raw), revision, *columns))
    db.commit()
    db.close()

    store = open_store(path)
    snap = store.snapshot()
    assert "bound to a port by name only" in caplog.text and "by-name" in caplog.text
    assert snap.match(guest("vnet0", 5)) is None
    assert snap.match(guest("p9", 9, mac="02:00:00:00:00:09", ip="10.0.0.9")) is None
    assert snap.match(guest("p3", 3, mac="52:54:00:00:00:03")).instance_id == "fine"
    assert store.get("ip-secrets").parked  # said so in the record, too
    assert serving(store.get("by-name")).startswith("nobody")
    # Binding it again serves it again, on that link only.
    store.modify("by-name", lambda r: dataclasses.replace(r, port_ifindex=5))
    assert store.snapshot().match(guest("vnet0", 5)).instance_id == "by-name"
