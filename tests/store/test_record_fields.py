"""The record's fields are declared once; the parser, file form, CLI and README agree."""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import yaml

from tests.keys import ED25519
from transparent_md.cli import instance as instance_cli
from transparent_md.store import Instance, parse_record
from transparent_md.store.fields import clearable_fields, file_keys, markdown_table
from transparent_md.store.fieldspec import SPEC
from transparent_md.store.record import FIELDS, record_specs

REPO = Path(__file__).resolve().parents[2]
README = REPO / "docs" / "records.md"
EXAMPLE = REPO / "examples" / "instances.yaml"


def test_every_instance_field_carries_its_declaration():
    names = [f.name for f in dataclasses.fields(Instance)]
    assert [name for name, _ in record_specs()] == names
    assert all(SPEC in f.metadata for f in dataclasses.fields(Instance))


def test_the_readme_record_table_is_the_generated_one():
    readme = README.read_text()
    section = readme.split("## Record format", 1)[-1].split("\n#", 1)[0]
    rows = re.findall(r"^\| (`[^|]+`) \|", section, flags=re.MULTILINE)
    listed = [k for cell in rows for k in re.findall(r"`([^`]+)`", cell)]
    assert sorted(set(listed)) == sorted(file_keys()), (
        "the README's record table lists other fields than Instance declares; paste the "
        "output of `python -m transparent_md.store.fields --markdown`")
    assert markdown_table() in readme, (
        "the README's record table differs from the declaration; paste the output of "
        "`python -m transparent_md.store.fields --markdown`")


def test_the_example_file_uses_every_key():
    used: set[str] = set()
    for raw in yaml.safe_load(EXAMPLE.read_text()):
        for key, value in raw.items():
            used.add(key)
            if isinstance(value, dict) and key in ("openstack", "gce"):
                used.update(f"{key}.{member}" for member in value)
    assert set(file_keys()) <= used


def test_every_declared_flag_is_an_option_of_add_and_update():
    declared = {flag.name for _, s in record_specs() for flag in s.flags}
    for verb in ("add", "update"):
        options = set(_verb_parser(verb)._option_string_actions)
        assert declared <= options, f"{verb} lacks {declared - options}"
    clear = next(a for a in _verb_parser("update")._actions if a.dest == "clear")
    assert set(clear.choices) == set(clearable_fields())
    assert {"openstack.meta", "user_data_base64", "iam"} <= set(clear.choices)


def test_every_flag_sets_its_field(tmp_path):
    """One invocation with every flag builds the record a file with every key builds."""
    files = {"ud": b"\x1f\x8bbinary", "vd": "{a: 1}", "nd": "{links: []}",
             "key": f"{ED25519} b@x\n",
             "iam": "{role: r, access_key_id: A, secret_access_key: S, token: T, "
                    "expiration: '2030-01-01T00:00:00Z'}"}
    for name, content in files.items():
        target = tmp_path / name
        target.write_bytes(content) if isinstance(content, bytes) else target.write_text(content)
    argv = ["add", "i-1", "--mac", "52:54:00:00:00:01", "--ip", "10.0.0.5",
            "--ipv6", "fd00:1::5", "--ipv6", "2001:db8::5", "--bridge", "br0",
            "--port", "tap0", "--hostname", "h", "--local-hostname", "lh",
            "--availability-zone", "eu-west-1b", "--instance-type", "m5.large",
            "--ami-id", "ami-1", "--reservation-id", "r-1", "--launch-index", "3",
            "--account-id", "123456789012", "--public-ipv4", "203.0.113.1",
            "--public-hostname", "p.example", "--security-group", "g1",
            "--security-group", "g2", "--ssh-key", f"a={ED25519} a@x",
            "--ssh-key-file", f"b={tmp_path / 'key'}", "--user-data-file",
            str(tmp_path / "ud"), "--vendor-data-file", str(tmp_path / "vd"),
            "--openstack-uuid", "0b6b7a4e-8e2f-4c59-9a43-1f2d3e4c5b6a", "--project-id", "p1",
            "--meta", "k=v", "--gce-project-id", "gp", "--gce-numeric-project-id", "42",
            "--gce-attribute", "enable-oslogin=false", "--network-data-file", str(tmp_path / "nd"),
            "--iam-file", str(tmp_path / "iam"), "--imdsv2-required", "--parked"]
    args = _verb_parser("add").parse_args(argv[1:])
    built = parse_record(instance_cli._apply({"instance_id": "i-1"},
                                             instance_cli._fields_from_flags(args)))
    expected = parse_record({
        "instance_id": "i-1", "mac": "52:54:00:00:00:01", "ip": "10.0.0.5",
        "ipv6": ["fd00:1::5", "2001:db8::5"], "bridge": "br0",
        "port": "tap0", "hostname": "h", "local_hostname": "lh",
        "availability_zone": "eu-west-1b", "instance_type": "m5.large", "ami_id": "ami-1",
        "reservation_id": "r-1", "launch_index": 3, "account_id": "123456789012",
        "public_ipv4": "203.0.113.1", "public_hostname": "p.example",
        "security_groups": ["g1", "g2"],
        "ssh_keys": {"a": f"{ED25519} a@x", "b": f"{ED25519} b@x"},
        "user_data": b"\x1f\x8bbinary", "vendor_data": {"a": 1},
        "openstack": {"uuid": "0b6b7a4e-8e2f-4c59-9a43-1f2d3e4c5b6a", "project_id": "p1",
                      "meta": {"k": "v"}},
        "gce": {"project_id": "gp", "numeric_project_id": 42,
                "attributes": {"enable-oslogin": "false"}},
        "network_data": {"links": []},
        "iam": {"role": "r", "access_key_id": "A", "secret_access_key": "S", "token": "T",
                "expiration": "2030-01-01T00:00:00Z"},
        "imdsv2_required": True, "parked": True})
    assert built == expected
    # Every field differs from its default, so the round trip covers every field.
    defaults = Instance(instance_id="i-1")
    assert all(getattr(built, n) != getattr(defaults, n) for n, s in record_specs()
               if n != "instance_id" and s.flags)
    assert parse_record(built.to_mapping()) == built
    assert "user_data_base64" in built.to_mapping()  # binary user-data takes its alias


def test_clear_removes_a_member_or_a_whole_section():
    raw = parse_record({"instance_id": "i-1", "mac": "52:54:00:00:00:01",
                        "user_data_base64": "AAEC/w==",
                        "openstack": {"project_id": "p", "meta": {"k": "v"}}}).to_mapping()
    instance_cli._clear(raw, "openstack.meta")
    assert raw["openstack"] == {"uuid": raw["openstack"]["uuid"], "project_id": "p"}
    instance_cli._clear(raw, "user_data")
    assert "user_data_base64" not in raw
    instance_cli._clear(raw, "openstack")
    assert "openstack" not in raw
    assert parse_record(raw).openstack_project_id == ""


def test_known_fields_are_the_top_level_keys():
    assert tuple(dict.fromkeys(k.split(".")[0] for k in file_keys())) == FIELDS


def _verb_parser(verb: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    instance_cli.register(parser.add_subparsers())
    instance = parser._subparsers._group_actions[0].choices["instance"]
    return instance._subparsers._group_actions[0].choices[verb]
