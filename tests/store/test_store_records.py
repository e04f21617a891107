"""Record validation, identity policy, the SQLite store and import files."""

from __future__ import annotations

import pytest

from transparent_md.errors import UserError
from transparent_md.identity import Guest
from transparent_md.store import PasswordAlreadySet, RecordError, open_store, parse_record
from transparent_md.store.importfile import read_records


def guest(mac="52:54:00:00:00:01", ip="10.0.0.5", bridge="br0", port="tap0",
          ifindex=1) -> Guest:
    return Guest(bridge=bridge, port=port, ifindex=ifindex, mac=mac, ip=ip)


@pytest.fixture
def store(tmp_path):
    s = open_store(str(tmp_path / "i.db"))
    yield s
    s.close()


# -- validation ------------------------------------------------------------------------

@pytest.mark.parametrize("raw,field,words", [
    ({"instance_id": "i-1"}, "mac", "needs a MAC"),
    ({"instance_id": "i-1", "ip": "10.0.0.1"}, "mac", "--bridge/--port"),
    ({"instance_id": "i-1", "mac": "zz"}, "mac", "not a MAC"),
    ({"instance_id": "i-1", "ip": "10.0.0.300"}, "ip", "IPv4"),
    ({"instance_id": "i-1", "mac": "52:54:00:00:00:01", "user_data": "x" * 16385},
     "user_data", "16 KiB"),
    ({"instance_id": "i-1", "ip": "10.0.0.1", "port": "tap1", "colour": "red"},
     "colour", "unknown field"),
    ({"instance_id": "i-1", "ip": "10.0.0.1", "port": "tap1", "availability_zone": "eu-west-1"},
     "availability_zone", "zone letter"),
    ({"instance_id": "i-1", "ip": "10.0.0.1", "port": "tap1", "iam": {"role": "r"}},
     "iam.access_key_id", "required"),
    ({"instance_id": "i-1", "ip": "10.0.0.1", "bridge": "a-very-long-bridge-name"}, "bridge",
     "interface name"),
    ({"ip": "10.0.0.1", "bridge": "br0"}, "instance_id", "required"),
])
def test_errors_name_record_field_and_problem(raw, field, words):
    with pytest.raises(RecordError) as caught:
        parse_record(raw, "#4")
    assert caught.value.field == field
    message = str(caught.value)
    assert "#4" in message and f"'{field}'" in message and words in message


def test_user_data_limit_is_exactly_16_kib():
    assert len(parse_record({"instance_id": "i", "mac": "52:54:00:00:00:01", "bridge": "br0",
                             "user_data": "x" * 16384}).user_data) == 16384


def test_region_is_zone_minus_letter_and_round_trip():
    record = parse_record({"instance-id": "i-1", "mac": "52-54-00-AA-BB-CC",
                           "availability_zone": "ap-south-2c", "user_data_base64": "AAEC"})
    assert record.region == "ap-south-2"
    assert record.mac == "52:54:00:aa:bb:cc"
    assert parse_record(record.to_mapping()) == record


# -- identity policy -------------------------------------------------------------------

def test_policy_mac_binding_ip_fallback_and_tenants(store):
    store.put_many([parse_record(r) for r in [
        {"instance_id": "by-mac", "mac": "52:54:00:00:00:01", "ip": "10.0.0.5"},
        {"instance_id": "tenant-1", "ip": "10.0.0.5", "bridge": "br1"},
        {"instance_id": "tenant-2", "ip": "10.0.0.5", "bridge": "br2"},
        {"instance_id": "port-bound", "mac": "52:54:00:00:00:09", "port": "tap9",
         "port_ifindex": 19},
    ]])
    snap = store.snapshot()

    def who(g):
        entry = snap.match(g)
        return entry.instance_id if entry else None

    assert who(guest()) == "by-mac"
    assert who(guest(ip="10.0.0.6")) is None  # MAC and IP set: both must match
    assert who(guest(mac="52:54:00:00:00:02", bridge="br1")) == "tenant-1"
    assert who(guest(mac="52:54:00:00:00:02", bridge="br2")) == "tenant-2"
    assert who(guest(mac="52:54:00:00:00:02", bridge="br3")) is None
    assert who(guest(mac="52:54:00:00:00:09", port="tap9", ifindex=19)) == "port-bound"
    assert who(guest(mac="52:54:00:00:00:09", port="tap8", ifindex=19)) is None
    # A new link under the old name (another ifindex) is not the bound port.
    assert who(guest(mac="52:54:00:00:00:09", port="tap9", ifindex=20)) is None


def test_ambiguous_records_are_refused(store):
    store.add(parse_record({"instance_id": "a", "ip": "10.0.0.5", "bridge": "br0"}))
    with pytest.raises(UserError, match="same guest as record a"):
        store.add(parse_record({"instance_id": "b", "ip": "10.0.0.5", "bridge": "br0"}))
    store.add(parse_record({"instance_id": "c", "ip": "10.0.0.5", "bridge": "br0",
                            "port": "tap0", "port_ifindex": 1}))
    assert store.snapshot().match(guest(mac="02:00:00:00:00:01")).instance_id == "c"
    # Two records on two links of the same name never meet: no conflict.
    store.add(parse_record({"instance_id": "d", "ip": "10.0.0.5", "bridge": "br0",
                            "port": "tap0", "port_ifindex": 2}))
    with pytest.raises(UserError, match="same guest as record c"):
        store.add(parse_record({"instance_id": "e", "ip": "10.0.0.5", "bridge": "br0",
                                "port": "tap0", "port_ifindex": 1}))
    # A parked record meets nobody: it may share everything with a served one.
    store.add(parse_record({"instance_id": "f", "ip": "10.0.0.5", "bridge": "br0",
                            "parked": True}))
    assert store.snapshot().match(guest(mac="02:00:00:00:00:01")).instance_id == "c"


# -- store -----------------------------------------------------------------------------

def test_changes_from_another_connection_reach_a_reader(tmp_path):
    path = str(tmp_path / "i.db")
    reader, writer = open_store(path), open_store(path)
    first = reader.snapshot()
    assert first.bindings == {}
    writer.add(parse_record({"instance_id": "i-1", "ip": "10.0.0.5", "bridge": "br0"}))
    second = reader.snapshot()
    assert set(second.bindings) == {"i-1"}
    assert reader.snapshot() is second  # unchanged: the same object, no reload
    writer.add(parse_record({"instance_id": "i-2", "ip": "10.0.0.6", "bridge": "br0"}))
    third = reader.snapshot()
    assert third.bindings["i-1"] is second.bindings["i-1"]  # untouched record reused
    writer.remove("i-1")
    assert set(reader.snapshot().bindings) == {"i-2"}


def test_password_once_and_kept_across_update(store):
    store.add(parse_record({"instance_id": "i-1", "ip": "10.0.0.5", "port": "tap0"}))
    store.set_password_once("i-1", "pw")
    with pytest.raises(PasswordAlreadySet):
        store.set_password_once("i-1", "again")
    store.update(parse_record({"instance_id": "i-1", "ip": "10.0.0.5", "port": "tap0",
                               "hostname": "h"}))
    assert store.password("i-1") == "pw"
    store.clear_password("i-1")
    store.set_password_once("i-1", "new")
    assert store.password("i-1") == "new"


def test_add_existing_and_remove_missing_are_user_errors(store):
    store.add(parse_record({"instance_id": "i-1", "ip": "10.0.0.5", "bridge": "br0"}))
    with pytest.raises(UserError, match="exists"):
        store.add(parse_record({"instance_id": "i-1", "ip": "10.0.0.6", "bridge": "br0"}))
    with pytest.raises(UserError, match="no instance"):
        store.remove("i-9")


# -- import files ----------------------------------------------------------------------

def test_example_file_imports(store):
    records = read_records("examples/instances.yaml")
    store.put_many(records)
    assert {i.instance_id for i in store.list()} == {r.instance_id for r in records}
    full = store.get("i-0a1b2c3d4e5f60001")
    assert full.iam.role == "web-role" and full.imdsv2_required
    assert store.get("i-binary-ud-0001").user_data.startswith(b"\x1f\x8b")


def test_bad_yaml_names_line_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- instance_id: i-1\n  ip: 10.0.0.5\n- instance_id: i-2\n"
                   "  mac: \"52:54:00:00:00:02\"\n  launch_index: -3\n")
    with pytest.raises(UserError) as caught:
        read_records(str(bad))
    assert "line 5" in str(caught.value)
    assert "'launch_index'" in str(caught.value) and "i-2" in str(caught.value)
    broken = tmp_path / "broken.yaml"
    broken.write_text("- instance_id: i-1\n  ip: [unclosed\n")
    with pytest.raises(UserError, match="line"):
        read_records(str(broken))


def test_import_is_all_or_nothing(store, tmp_path):
    store.add(parse_record({"instance_id": "keep", "ip": "10.0.0.1", "bridge": "br0"}))
    conflicting = tmp_path / "c.json"
    conflicting.write_text('[{"instance_id": "new-1", "ip": "10.0.0.2", "bridge": "br0"},'
                           ' {"instance_id": "new-2", "ip": "10.0.0.1", "bridge": "br0"}]')
    with pytest.raises(UserError):
        store.put_many(read_records(str(conflicting)))
    assert [i.instance_id for i in store.list()] == ["keep"]
