"""A store file in trouble: held by another process, its generation file cut short or
gone, damaged. Each costs guests as little as it can and tells the operator in one line.

Real files, real SQLite locks held by another process, the real CLI and admin API.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from transparent_md.api.client import ApiClient
from transparent_md.api.server import AdminServer
from transparent_md.daemon.store_source import open_serving_store
from transparent_md.identity import Guest
from transparent_md.store import open_store, parse_record
from transparent_md.store.errors import StoreBusy
from transparent_md.store.lock_wait import MAX_WAIT_S, PATIENCE_LOST_S

REPO = str(Path(__file__).resolve().parents[2])
# Holds the store's exclusive lock (no reader gets in) until told to stop.
HOLDER = textwrap.dedent("""
    import sqlite3, sys
    db = sqlite3.connect(sys.argv[1], isolation_level=None)
    db.execute("BEGIN EXCLUSIVE")
    print("held", flush=True)
    sys.stdin.readline()
    db.execute("ROLLBACK")
""")
# Slack for a loaded 2-core machine on top of the waits the store promises.
SLACK_S = 0.25


def mac(i: int) -> str:
    return f"52:54:00:00:{i >> 8:02x}:{i & 0xFF:02x}"


def guest(i: int) -> Guest:
    return Guest(bridge="br0", port="p0", ifindex=2, mac=mac(i), ip="10.0.0.2")


def make_store(path: str, records: int = 3) -> None:
    store = open_store(path)
    store.put_many([parse_record({"instance_id": f"i-{i}", "mac": mac(i),
                                  "user_data": "x" * 2000}) for i in range(records)])
    store.close()


class HeldLock:
    """Another process holding the store's exclusive lock, as `sqlite3` in a shell
    would (or an import stuck half-way)."""

    def __init__(self, path: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, path],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "held"

    def release(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("\n")
            self.proc.stdin.flush()
            self.proc.wait(30)


def test_a_held_lock_costs_a_serving_store_one_short_wait_and_cached_guests_nothing(tmp_path):
    path = str(tmp_path / "instances.db")
    make_store(path)
    store = open_serving_store(path)
    store.snapshot()
    assert store.entry_for(guest(0)) is not None  # i-0 is in memory now
    held = HeldLock(path)
    try:
        # A writer's stamp while the lock is held: the reload cannot read, and the
        # snapshot loaded before is served on, without waiting.
        stamp = os.open(path + ".generation", os.O_WRONLY)
        os.pwrite(stamp, b"changed!", 0)
        os.close(stamp)
        started = time.monotonic()
        for _ in range(100):  # the reload tries once and never waits
            assert len(store.snapshot().bindings) == 3
            assert store.entry_for(guest(0)).instance.instance_id == "i-0"
        assert time.monotonic() - started < SLACK_S
        started = time.monotonic()
        with pytest.raises(StoreBusy, match=f"store {path} is locked by another process"):
            store.entry_for(guest(1))  # not in memory: the guest is answered 503
        first = time.monotonic() - started
        assert first < MAX_WAIT_S + SLACK_S
        # Once a wait was in vain, further reads do not wait at all for a while.
        started = time.monotonic()
        for _ in range(20):
            with pytest.raises(StoreBusy):
                store.entry_for(guest(2))
            # No record in the old snapshot, which is behind a write: not a 404 yet.
            with pytest.raises(StoreBusy):
                store.entry_for(guest(77))
            assert store.entry_for(guest(0)) is not None
        assert time.monotonic() - started < SLACK_S
    finally:
        held.release()
    deadline = time.monotonic() + PATIENCE_LOST_S + 5
    while True:  # served again once the lock is gone (and the store waits again)
        try:
            assert store.entry_for(guest(1)).instance.instance_id == "i-1"
            assert store.entry_for(guest(77)) is None
            break
        except StoreBusy:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    store.close()


def test_a_generation_file_cut_short_or_removed_is_survived_and_changes_still_seen(tmp_path):
    path = str(tmp_path / "instances.db")
    make_store(path)
    reader = open_serving_store(path)
    assert len(reader.snapshot().bindings) == 3
    os.truncate(path + ".generation", 0)  # a mapped file would be SIGBUS here
    assert len(reader.snapshot().bindings) == 3
    writer = open_store(path)
    writer.add(parse_record({"instance_id": "i-9", "mac": mac(9)}))
    assert "i-9" in reader.snapshot().bindings
    assert os.path.getsize(path + ".generation") == 8  # the write made it whole
    os.unlink(path + ".generation")
    reader.check_files()  # what the serving loop's timer does every second
    writer.close()
    writer = open_store(path)
    writer.remove("i-9")
    assert "i-9" not in reader.snapshot().bindings
    writer.close()
    reader.close()


def damage(path: str) -> None:
    """Overwrite the store's pages past the first with junk, as a bad disk would."""
    size = os.path.getsize(path)
    with open(path, "r+b") as handle:
        handle.seek(4096)
        handle.write(b"\xa5" * (size - 4096))


def run_cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "transparent_md", *argv],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": REPO})


@pytest.mark.parametrize("how", ["header", "pages"])
def test_a_corrupted_store_is_one_line_from_the_cli(tmp_path, how):
    path = str(tmp_path / "instances.db")
    make_store(path, records=40)
    if how == "header":
        with open(path, "r+b") as handle:
            handle.write(b"this is no database at all")
    else:
        damage(path)
    for argv in (["instance", "list"], ["instance", "show", "i-1"],
                 ["instance", "add", "i-new", "--mac", mac(99)]):
        res = run_cli(*argv, "--store", path)
        assert res.returncode == 2, (argv, res.stdout, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
        assert lines[0].startswith(f"transparent-md: error: store {path} is corrupted"), lines


def test_a_corrupted_store_is_one_line_from_the_api(tmp_path):
    path = str(tmp_path / "instances.db")
    make_store(path, records=40)
    server = AdminServer(str(tmp_path / "run" / "tmd.sock"), lambda: open_store(path))
    server.start()
    client = ApiClient(server.path)
    try:
        damage(path)
        for method, target, body in (("GET", "/v1/instances", None),
                                     ("GET", "/v1/instances/i-1", None),
                                     ("PUT", "/v1/instances/i-new", {"mac": mac(99)})):
            reply = client.request(method, target, body)
            assert reply.status == 500, (target, reply.body)
            assert reply.body["error"].startswith(f"store {path} is corrupted"), reply.body
            assert "\n" not in reply.body["error"]
    finally:
        client.close()
        server.stop()


# Run in a private mount namespace (`unshare -m`): a small tmpfs filled to the last
# byte holds the store; the CLI and the admin API then try to write to it. The mount
# goes with the namespace; the host's mounts are never touched.
FULL_DISK = textwrap.dedent("""
    import json, os, subprocess, sys
    from transparent_md.api.client import ApiClient
    from transparent_md.api.server import AdminServer
    from transparent_md.store import open_store, parse_record
    mount_point, sock = sys.argv[1], sys.argv[2]
    subprocess.run(["mount", "--make-rprivate", "/"], check=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", mount_point],
                   check=True)
    path = os.path.join(mount_point, "instances.db")
    store = open_store(path)
    store.add(parse_record({"instance_id": "i-0", "mac": "52:54:00:00:00:01"}))
    store.close()
    filler = os.open(os.path.join(mount_point, "filler"), os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(filler, bytes(4096)):
            pass
    except OSError:
        pass
    os.close(filler)
    big = "x" * 8000
    cli = subprocess.run([sys.executable, "-m", "transparent_md", "instance", "add", "i-1",
                          "--mac", "52:54:00:00:00:02", "--hostname", big[:60],
                          "--store", path], capture_output=True, text=True)
    server = AdminServer(sock, lambda: open_store(path))
    server.start()
    client = ApiClient(server.path)
    reply = client.request("PUT", "/v1/instances/i-2",
                           {"mac": "52:54:00:00:00:03", "user_data": big})
    client.close()
    server.stop()
    print(json.dumps({"path": path, "cli_rc": cli.returncode, "cli_err": cli.stderr,
                      "api_status": reply.status, "api_body": reply.body}))
""")


@pytest.mark.netns  # root: a mount namespace and a tmpfs of its own
def test_a_full_disk_is_one_line_from_the_cli_and_the_api(tmp_path):
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    res = subprocess.run(["unshare", "-m", sys.executable, "-c", FULL_DISK, str(mount_point),
                          str(tmp_path / "api.sock")],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": REPO})
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    path = out["path"]
    assert out["cli_rc"] == 2 and "Traceback" not in out["cli_err"], out["cli_err"]
    assert out["cli_err"].strip() == (f"transparent-md: error: disk full at {path}: nothing "
                                      "was written; free space on its filesystem and retry")
    assert out["api_status"] == 507, out
    assert out["api_body"]["error"].startswith(f"disk full at {path}: nothing was written")
    assert not os.listdir(mount_point)  # the tmpfs was the namespace's alone
