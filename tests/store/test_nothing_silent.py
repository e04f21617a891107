"""Mistakes an operator makes with records are refused in one line, never silently served.

A store path that does not exist (a typo) is refused by every verb that only reads or
changes records, creating nothing; `--prune` with an empty file needs `--allow-empty`;
multicast MACs and malformed SSH keys are refused by every writer; the clash message
names only remedies that fit the two records.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from tests.conftest import write_records
from tests.keys import ED25519
from transparent_md.store import DEFAULT_STORE_PATH, RecordError, open_store, parse_record
from transparent_md.store.policy import clash_message

RECORD = {"instance_id": "i-1", "mac": "52:54:00:00:00:01", "bridge": "br0", "port": "tap1"}


def cli(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "transparent_md", "instance", *argv],
                          input=stdin, capture_output=True, text=True, timeout=60)


def one_line_error(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("transparent-md: error: "), res.stderr
    assert "Traceback" not in res.stderr
    return lines[0]


@pytest.mark.parametrize("verb", [
    ["list"], ["show", "i-1"], ["update", "i-1", "--hostname", "h"], ["remove", "i-1"],
    ["bind", "i-1", "--port", "tap1"], ["unbind", "i-1"],
])
def test_a_store_that_does_not_exist_is_refused_and_not_created(tmp_path, verb):
    typo = tmp_path / "no-such-dir" / "instances.db"
    line = one_line_error(cli(*verb, "--store", str(typo)))
    assert f"instance store {typo} does not exist" in line
    assert not typo.parent.exists()


def test_verbs_that_create_records_create_the_store(tmp_path):
    records = tmp_path / "records.yaml"
    records.write_text(yaml.safe_dump([RECORD]))
    for verb in (["add", "i-1", "--mac", RECORD["mac"]], ["import", str(records)],
                 ["apply", str(records)]):
        store = tmp_path / f"{verb[0]}.db"
        res = cli(*verb, "--store", str(store))
        assert res.returncode == 0, res.stderr
        assert store.exists()


def test_an_unknown_record_names_the_store(tmp_path):
    store = str(tmp_path / "instances.db")
    write_records(store, [RECORD])
    assert f"no instance 'i-0g2' in {store}" in one_line_error(
        cli("bind", "i-0g2", "--port", "tap9", "--store", store))
    assert f"in {store}" in one_line_error(cli("show", "i-0g2", "--store", store))


@pytest.mark.netns  # needs root for a mount namespace of its own
def test_bind_without_store_creates_nothing_under_var_lib(tmp_path):
    """`bind` with the default store, in a mount namespace whose /var/lib is empty: the
    default store does not exist, so it is refused and neither it nor its directory is
    made (the real /var/lib is never touched)."""
    script = (f"mount -t tmpfs tmpfs /var/lib && {sys.executable} -m transparent_md instance "
              "bind i-0g2 --port tap9; echo rc=$?; ls -A /var/lib")
    res = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                         capture_output=True, text=True, timeout=60)
    assert f"instance store {DEFAULT_STORE_PATH} does not exist" in res.stderr, res.stderr
    assert res.stdout.split() == ["rc=2"], res.stdout  # and /var/lib stayed empty


@pytest.mark.parametrize("verb", ["apply", "import"])
def test_prune_with_an_empty_file_needs_allow_empty(tmp_path, verb):
    store = str(tmp_path / "instances.db")
    write_records(store, [RECORD])
    empty = tmp_path / "empty.yaml"
    empty.write_text("[]\n")
    line = one_line_error(cli(verb, str(empty), "--prune", "--store", store))
    assert "lists no records" in line and "--allow-empty" in line and store in line
    assert [r.instance_id for r in open_store(store).list()] == ["i-1"]  # nothing lost
    res = cli(verb, str(empty), "--prune", "--allow-empty", "--store", store)
    assert res.returncode == 0, res.stderr
    assert open_store(store).list() == []


@pytest.mark.parametrize("mac", ["01:00:5e:00:00:01", "ff:ff:ff:ff:ff:ff", "33:33:00:00:00:01",
                                 "00:00:00:00:00:00"])
def test_a_mac_that_is_no_guests_is_refused_by_every_writer(tmp_path, mac):
    store = str(tmp_path / "instances.db")
    with pytest.raises(RecordError, match="mac"):
        parse_record({"instance_id": "i-1", "mac": mac})
    assert "mac" in one_line_error(cli("add", "i-1", "--mac", mac, "--store", store))
    records = tmp_path / "r.yaml"
    records.write_text(yaml.safe_dump([{"instance_id": "i-1", "mac": mac}]))
    imported = cli("import", str(records), "--store", store)  # a file's problems: a list
    assert imported.returncode == 2 and "field 'mac'" in imported.stderr, imported.stderr
    assert open_store(store).list() == []


@pytest.mark.parametrize("key", [
    "not a key",
    "ssh-ed25519",
    "ssh-ed25519 AAAA me",  # decodes, names no type
    "ssh-rsa " + ED25519.split()[1] + " me",  # an ed25519 blob under another type
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5!!!! me",  # not base64
    "-----BEGIN OPENSSH PRIVATE KEY-----",
])
def test_an_ssh_key_that_does_not_parse_is_refused(tmp_path, key):
    with pytest.raises(RecordError, match="not an OpenSSH public key"):
        parse_record({**RECORD, "ssh_keys": {"me": key}})
    store = str(tmp_path / "instances.db")
    line = one_line_error(cli("add", "i-1", "--mac", RECORD["mac"], "--ssh-key", f"me={key}",
                              "--store", store))
    assert "not an OpenSSH public key" in line


def test_a_real_ssh_key_is_accepted():
    for key in (ED25519, f"{ED25519} me@host", Path(__file__).parent.joinpath(
            "../../examples/instances.yaml").read_text().split("alice: ")[1].split("\n")[0]):
        assert parse_record({**RECORD, "ssh_keys": {"me": key}}).ssh_keys


def test_the_clash_message_fits_the_records(tmp_path):
    store = str(tmp_path / "instances.db")
    by_mac = {"instance_id": "i-1", "mac": "52:54:00:00:00:01", "bridge": "br0"}
    write_records(store, [by_mac])
    twin = tmp_path / "twin.yaml"
    twin.write_text(yaml.safe_dump([{**by_mac, "instance_id": "i-2"}]))
    line = one_line_error(cli("import", str(twin), "--store", store))
    assert open_store(store).get("i-2") is None  # nothing written
    assert "bind i-1 to its port" in line and "bind i-2 to its port" in line
    assert "MAC" not in line.split(";", 1)[1]  # both have one: no "give it a MAC"
    alike = SimpleNamespace(instance_id="a", mac="52:54:00:00:00:01", ip="10.0.0.5",
                            bridge="br0", port="tap1")
    message = clash_message(alike, SimpleNamespace(**{**vars(alike), "instance_id": "b"}))
    assert "bound alike" in message and "give" not in message and "to its port" not in message

    ip_only = [{"instance_id": "a", "ip": "10.0.0.5", "bridge": "br0"},
               {"instance_id": "b", "ip": "10.0.0.5", "bridge": "br0"}]
    both = tmp_path / "ip.yaml"
    both.write_text(yaml.safe_dump(ip_only))
    line = one_line_error(cli("import", str(both), "--store", str(tmp_path / "ip.db")))
    assert "bind a to its port" in line and "give b its MAC" in line
