"""Store hygiene: private files, a replaced or removed file, unbound records, removals."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from transparent_md.errors import UserError
from transparent_md.identity import Guest
from transparent_md.store import SqliteStore, open_store, parse_record

REPO = str(Path(__file__).resolve().parents[2])
MAC_A = "52:54:00:00:00:0a"
MAC_B = "52:54:00:00:00:0b"


def guest(mac: str = MAC_A) -> Guest:
    return Guest(bridge="br0", port="tap0", ifindex=1, mac=mac, ip="10.0.0.5")


def record(instance_id: str, mac: str = MAC_A, **extra) -> dict:
    return {"instance_id": instance_id, "mac": mac, **extra}


def make_store_file(path: str, records: list[dict]) -> None:
    store = open_store(path)
    store.put_many([parse_record(r) for r in records])
    store.close()


# -- private files ---------------------------------------------------------------------

def test_new_store_file_and_directory_are_private_whatever_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = tmp_path / "state" / "sub" / "i.db"
        store = open_store(str(path))
        store.add(parse_record(record("i-1")))
        store.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(Path(f"{path}.generation").stat().st_mode) == 0o600
    # The rollback journal, not WAL: no -wal/-shm files to pair with a replaced store.
    assert not Path(f"{path}-wal").exists()


def test_an_existing_readable_store_is_reported_with_the_fix(tmp_path, caplog):
    path = tmp_path / "i.db"
    make_store_file(str(path), [record("i-1")])
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        open_store(str(path)).close()
    assert f"chmod 600 {path}" in caplog.text and "0644" in caplog.text
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # the operator's choice is kept


def test_a_wal_store_from_an_older_version_leaves_wal(tmp_path):
    path = str(tmp_path / "i.db")
    make_store_file(path, [record("i-1")])
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode = WAL").fetchone()[0] == "wal"
    db.close()
    store = open_store(path)
    assert store.get("i-1") is not None
    store.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    db.close()


# -- replaced and removed store files --------------------------------------------------

def test_a_store_file_replaced_by_rename_is_reopened(tmp_path, caplog):
    path = str(tmp_path / "i.db")
    make_store_file(path, [record("i-old", hostname="old")])
    reader = SqliteStore(path, check_interval=0.0)
    assert reader.entry_for(guest()).instance.hostname == "old"
    staged = str(tmp_path / "staged.db")
    make_store_file(staged, [record("i-new", hostname="new"), record("i-b", MAC_B)])
    with caplog.at_level(logging.WARNING):
        os.replace(staged, path)  # what mv and rsync do
        snapshot = reader.snapshot()
    assert set(snapshot.bindings) == {"i-new", "i-b"}
    assert reader.entry_for(guest()).instance.hostname == "new"
    assert "was replaced: reopened it, 2 records" in caplog.text
    # Later CLI writes reach the reader through the new file.
    writer = open_store(path)
    writer.remove("i-b")
    assert set(reader.snapshot().bindings) == {"i-new"}
    writer.close()
    reader.close()


def test_a_replaced_store_file_is_read_by_a_running_reader_from_another_process(tmp_path):
    """The replacement is made by another process (as rsync would), seen within 1 s."""
    path = str(tmp_path / "i.db")
    make_store_file(path, [record("i-old")])
    reader = SqliteStore(path, check_interval=0.0)
    reader.snapshot()
    script = ("import os, sys\n"
              "from transparent_md.store import open_store, parse_record\n"
              "s = open_store(sys.argv[1] + '.tmp')\n"
              "s.add(parse_record({'instance_id': 'i-rsynced', 'mac': '52:54:00:00:00:0a'}))\n"
              "s.close()\n"
              "os.rename(sys.argv[1] + '.tmp', sys.argv[1])\n")
    subprocess.run([sys.executable, "-c", script, path], cwd=REPO, check=True, timeout=60)
    assert reader.entry_for(guest()).instance.instance_id == "i-rsynced"
    reader.close()


def test_the_file_check_is_rate_limited(tmp_path):
    """With a long interval nothing is stat'ed on the request path: the old file stays."""
    path = str(tmp_path / "i.db")
    make_store_file(path, [record("i-old")])
    reader = SqliteStore(path, check_interval=3600.0)
    first = reader.snapshot()
    staged = str(tmp_path / "staged.db")
    make_store_file(staged, [record("i-new")])
    os.replace(staged, path)
    assert reader.snapshot() is first
    reader.close()


def test_a_removed_store_file_logs_once_and_keeps_serving(tmp_path, caplog):
    path = str(tmp_path / "i.db")
    make_store_file(path, [record("i-1", hostname="kept"), record("i-2", MAC_B)])
    reader = SqliteStore(path, check_interval=0.0)
    reader.snapshot()
    os.unlink(path)
    with caplog.at_level(logging.ERROR):
        for _ in range(3):
            snapshot = reader.snapshot()
    assert set(snapshot.bindings) == {"i-1", "i-2"}
    assert reader.entry_for(guest()).instance.hostname == "kept"  # not cached before
    removed = [r for r in caplog.records if "was removed" in r.getMessage()]
    assert len(removed) == 1 and removed[0].levelno == logging.ERROR
    # A write at the path makes a new store, which the reader then serves.
    make_store_file(path, [record("i-3", hostname="fresh")])
    assert reader.entry_for(guest()).instance.hostname == "fresh"
    reader.close()


def test_a_replaced_generation_file_is_followed(tmp_path):
    path = str(tmp_path / "i.db")
    make_store_file(path, [record("i-1")])
    reader = SqliteStore(path, check_interval=0.0)
    reader.snapshot()
    os.unlink(f"{path}.generation")
    writer = open_store(path)  # creates a new generation file and stamps it
    writer.add(parse_record(record("i-2", MAC_B)))
    assert set(reader.snapshot().bindings) == {"i-1", "i-2"}
    writer.close()
    reader.close()


# -- records bound to nothing ----------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["instance", "add", "i-1", "--ip", "10.0.0.5"],
    ["instance", "update", "i-0", "--clear", "mac"],
])
def test_cli_refuses_an_unbound_record_saying_why_and_how(tmp_path, argv):
    path = str(tmp_path / "i.db")
    make_store_file(path, [record("i-0", ip="10.0.0.9")])
    done = run_cli([*argv, "--store", path])
    assert done.returncode == 2
    assert "would answer on every bridge" in done.stderr
    assert "--mac" in done.stderr and "--bridge/--port" in done.stderr
    assert open_store(path).get("i-0").mac == MAC_A  # nothing changed


def test_the_store_refuses_an_unbound_instance_built_without_the_parser(tmp_path):
    from transparent_md.store import Instance
    store = open_store(str(tmp_path / "i.db"))
    with pytest.raises(UserError, match="would answer on every bridge"):
        store.add(Instance(instance_id="i-1", ip="10.0.0.5"))
    store.close()


def test_an_unbound_record_stored_by_an_older_version_is_listed_but_never_served(
        tmp_path, caplog):
    path = str(tmp_path / "i.db")
    make_store_file(path, [record("i-ok", MAC_B)])
    legacy = {"instance_id": "i-legacy", "ip": "10.0.0.5"}
    db = sqlite3.connect(path)
    db.execute("INSERT INTO instances (instance_id, record, revision, ip) VALUES (?, ?, 99, ?)",
               ("i-legacy", json.dumps(legacy), "10.0.0.5"))
    db.commit()
    db.close()
    store = open_store(path)
    with caplog.at_level(logging.ERROR):
        assert set(store.snapshot().bindings) == {"i-ok"}
    assert store.entry_for(guest(mac="02:00:00:00:00:99")) is None
    assert "i-legacy" in caplog.text and "would answer on every bridge" in caplog.text
    assert [i.instance_id for i in store.list()] == ["i-legacy", "i-ok"]
    # The operator fixes it by binding it; from then on it is served.
    done = run_cli(["instance", "update", "i-legacy", "--bridge", "br0", "--store", path])
    assert done.returncode == 0, done.stderr
    assert store.entry_for(guest(mac="02:00:00:00:00:99")).instance.instance_id == "i-legacy"
    store.close()


def test_add_warns_about_secrets_without_a_port_binding(tmp_path):
    path = str(tmp_path / "i.db")
    user_data = tmp_path / "ud"
    user_data.write_text("#cloud-config\n")
    loose = run_cli(["instance", "add", "i-1", "--mac", MAC_A, "--bridge", "br0",
                     "--user-data-file", str(user_data), "--store", path])
    assert loose.returncode == 0
    assert ("warning: record i-1 carries user-data and is bound to its MAC, not to a port: "
            f"a guest on bridge br0 that sends from MAC {MAC_A} reads them") in loose.stderr
    bound = run_cli(["instance", "add", "i-2", "--mac", MAC_B, "--port", "lo",
                     "--user-data-file", str(user_data), "--store", path])
    assert bound.returncode == 0 and "warning" not in bound.stderr
    plain = run_cli(["instance", "add", "i-3", "--mac", "52:54:00:00:00:0c", "--store", path])
    assert plain.returncode == 0 and "warning" not in plain.stderr


# -- removing --------------------------------------------------------------------------

def test_remove_checks_every_id_before_removing_any(tmp_path):
    path = str(tmp_path / "i.db")
    make_store_file(path, [record("a"), record("b", MAC_B)])
    done = run_cli(["instance", "remove", "a", "x", "b", "y", "--store", path])
    assert done.returncode == 2
    assert "no instance 'x', 'y'" in done.stderr and "nothing removed" in done.stderr
    assert [i.instance_id for i in open_store(path).list()] == ["a", "b"]
    done = run_cli(["instance", "remove", "a", "x", "--missing-ok", "--store", path])
    assert done.returncode == 0 and "skipped: x" in done.stderr
    assert [i.instance_id for i in open_store(path).list()] == ["b"]


def run_cli(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "transparent_md", *argv],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
