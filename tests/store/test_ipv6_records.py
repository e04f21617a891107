"""IPv6 addresses in records: validation, the identity policy for IPv6 guests, and the
EC2 and OpenStack documents that show them. No root needed."""

from __future__ import annotations

import json

import pytest

from transparent_md.identity import Guest
from transparent_md.responder import ec2, openstack
from transparent_md.store.policy import IdentityIndex, find_conflict
from transparent_md.store.record import RecordError, parse_record

MAC, OTHER_MAC = "52:54:00:00:00:01", "52:54:00:00:00:02"
LINK_LOCAL = "fe80::5054:ff:fe00:1"


def record(instance_id: str = "i-1", **fields):
    return parse_record({"instance_id": instance_id, **fields})


def guest(ip: str, mac: str = MAC, bridge: str = "br0", port: str = "tap0") -> Guest:
    return Guest(bridge=bridge, port=port, ifindex=7, mac=mac, ip=ip)


def test_addresses_are_normalised_and_kept_in_order():
    built = record(mac=MAC, ipv6=["FD00:1:0::5", "2001:db8::5"])
    assert built.ipv6 == ("fd00:1::5", "2001:db8::5")
    assert built.to_mapping()["ipv6"] == ["fd00:1::5", "2001:db8::5"]
    assert "ipv6" not in record(mac=MAC).to_mapping()


@pytest.mark.parametrize("value,problem", [
    ("fd00::1", "must be a list"),
    (["10.0.0.5"], "is not an IPv6 address"),
    (["ff02::1"], "not a unicast"),
    (["::"], "not a unicast"),
    (["::1"], "not a unicast"),
    (["::ffff:10.0.0.5"], "not a unicast"),
    ([LINK_LOCAL], "is link-local"),
    (["fd00::1", "fd00:0::1"], "listed twice"),
])
def test_bad_addresses_are_refused_with_one_line(value, problem):
    with pytest.raises(RecordError) as err:
        record(mac=MAC, ipv6=value)
    assert problem in str(err.value) and "field 'ipv6'" in str(err.value)
    assert "\n" not in str(err.value)


def test_an_ipv6_only_record_still_needs_a_mac_or_a_binding():
    with pytest.raises(RecordError, match="neither a MAC nor a bridge/port"):
        record(ipv6=["fd00:1::5"])


def test_ipv6_guests_match_listed_addresses_and_link_local_by_mac():
    index = IdentityIndex([record("i-a", mac=MAC, ip="10.0.0.5", ipv6=["fd00:1::5"]),
                           record("i-v4only", mac=OTHER_MAC, ip="10.0.0.6")])
    assert index.match(guest("fd00:1::5")).instance_id == "i-a"
    assert index.match(guest(LINK_LOCAL)).instance_id == "i-a"
    assert index.match(guest("10.0.0.5")).instance_id == "i-a"
    assert index.match(guest("fd00:1::99")) is None           # not one of its addresses
    assert index.match(guest("fd00:1::5", mac=OTHER_MAC)) is None  # a record without ipv6
    assert index.match(guest(LINK_LOCAL, mac=OTHER_MAC)) is None


def test_bindings_hold_for_ipv6_guests_as_for_ipv4():
    index = IdentityIndex([record("i-bound", mac=MAC, port="tap0", ipv6=["fd00:1::5"]),
                           record("i-b", bridge="br1", ipv6=["fd00:1::5"])])
    assert index.match(guest("fd00:1::5", port="tap9")) is None  # a copy on another port
    assert index.match(guest("fd00:1::5", mac=OTHER_MAC, bridge="br1")).instance_id == "i-b"
    assert index.match(guest(LINK_LOCAL, mac=OTHER_MAC, bridge="br1")) is None


def test_two_tenants_with_one_address_on_two_bridges_are_apart():
    index = IdentityIndex([record("i-t1", bridge="br0", ipv6=["fd00:1::5"]),
                           record("i-t2", bridge="br1", ipv6=["fd00:1::5"])])
    assert index.match(guest("fd00:1::5", bridge="br0")).instance_id == "i-t1"
    assert index.match(guest("fd00:1::5", bridge="br1")).instance_id == "i-t2"
    assert find_conflict(index_records := [record("x", bridge="br0", ipv6=["fd00::5"]),
                                           record("y", bridge="br1", ipv6=["fd00::5"])]) is None
    assert index_records


def test_records_an_ipv6_guest_could_not_tell_apart_are_refused():
    same_address = [record("x", bridge="br0", ipv6=["fd00::5"]),
                    record("y", bridge="br0", ipv6=["fd00::6", "fd00::5"])]
    same_mac = [record("x", mac=MAC, ip="10.0.0.5", ipv6=["fd00::5"]),
                record("y", mac=MAC, ip="10.0.0.6", ipv6=["fd00::6"])]
    assert {r.instance_id for r in find_conflict(same_address)} == {"x", "y"}
    assert {r.instance_id for r in find_conflict(same_mac)} == {"x", "y"}
    # Secondary IPv4 records of one MAC stay legal as long as one of them has IPv6.
    assert find_conflict([record("x", mac=MAC, ip="10.0.0.5", ipv6=["fd00::5"]),
                          record("y", mac=MAC, ip="10.0.0.6")]) is None


def test_ec2_tree_shows_ipv6_and_no_ipv4_the_guest_does_not_have():
    tree = ec2.render(record(mac=MAC, ipv6=["fd00:1::5", "fd00:1::6"]), MAC, "")
    assert tree[b"meta-data/ipv6"].body == b"fd00:1::5"
    assert tree[f"meta-data/network/interfaces/macs/{MAC}/ipv6s".encode()].body == \
        b"fd00:1::5\nfd00:1::6"
    assert b"meta-data/local-ipv4" not in tree
    listing = tree[f"meta-data/network/interfaces/macs/{MAC}".encode()].body.split(b"\n")
    assert b"ipv6s" in listing and b"local-ipv4s" not in listing


def test_identity_document_is_the_same_for_both_families():
    dual = record(mac=MAC, ip="10.0.0.5", ipv6=["fd00:1::5"])
    assert ec2.identity_document(dual, "10.0.0.5") == ec2.render(dual, MAC, "10.0.0.5")[
        b"dynamic/instance-identity/document"].body


@pytest.mark.parametrize("fields,types", [
    ({"ip": "10.0.0.5"}, ["ipv4_dhcp"]),
    ({"ip": "10.0.0.5", "ipv6": ["fd00:1::5"]}, ["ipv4_dhcp", "ipv6_slaac"]),
    ({"ipv6": ["fd00:1::5"]}, ["ipv6_slaac"]),
])
def test_openstack_network_data_lists_an_ipv6_network(fields, types):
    document = openstack.network_data(record(mac=MAC, **fields), MAC, "")
    assert [n["type"] for n in document["networks"]] == types
    assert all(n["link"] == document["links"][0]["id"] for n in document["networks"])
    json.dumps(document)
