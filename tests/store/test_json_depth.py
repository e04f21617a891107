"""JSON fields of records nest at most MAX_JSON_DEPTH levels, by every way records come in.

A 900-deep `vendor_data` used to be accepted, and `instance show` then died with
RecursionError. Each writer (CLI flags, import, admin API, libvirt hook) now refuses it
with one line; the limit itself is accepted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from transparent_md.api.client import ApiClient
from transparent_md.api.server import AdminServer
from transparent_md.store import open_store, parse_record
from transparent_md.store.record import DEEP_JSON_PROBLEM, MAX_JSON_DEPTH, RecordError

REPO = str(Path(__file__).resolve().parents[2])
MAC = "52:54:00:00:00:01"
HOSTILE_DEPTH = 900


def nested(depth: int) -> object:
    value: object = "bottom"
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


def cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "transparent_md", *argv], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": REPO})


def assert_one_line_refusal(res: subprocess.CompletedProcess) -> None:
    assert res.returncode != 0, res
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1, (
        res.stderr)


def test_the_limit_is_accepted_and_one_more_level_refused():
    ok = parse_record({"instance_id": "i-1", "mac": MAC, "vendor_data": nested(MAX_JSON_DEPTH),
                       "network_data": {"links": nested(MAX_JSON_DEPTH - 1)}})
    assert ok.vendor_data == nested(MAX_JSON_DEPTH)
    for field, value in (("vendor_data", nested(MAX_JSON_DEPTH + 1)),
                         ("network_data", {"links": nested(MAX_JSON_DEPTH)})):
        with pytest.raises(RecordError) as refused:
            parse_record({"instance_id": "i-1", "mac": MAC, field: value})
        assert refused.value.field == field and refused.value.problem == DEEP_JSON_PROBLEM


def test_the_cli_refuses_a_deep_vendor_data_file_and_import(tmp_path):
    store = str(tmp_path / "instances.db")
    deep = tmp_path / "vendor.json"
    deep.write_text(json.dumps(nested(HOSTILE_DEPTH)))
    res = cli("instance", "add", "i-1", "--mac", MAC, "--vendor-data-file", str(deep),
              "--store", store)
    assert_one_line_refusal(res)
    assert DEEP_JSON_PROBLEM in res.stderr
    records = tmp_path / "records.json"
    records.write_text(json.dumps([{"instance_id": "i-1", "mac": MAC,
                                    "vendor_data": nested(HOSTILE_DEPTH)}]))
    res = cli("instance", "import", str(records), "--store", store)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    # An import lists its problems one line each, under a line counting them.
    assert f"record #1 (i-1), field 'vendor_data': {DEEP_JSON_PROBLEM}" in res.stderr
    db = open_store(store)
    assert db.list() == []
    db.close()


def test_the_api_answers_422_for_deep_vendor_data(tmp_path):
    store = str(tmp_path / "instances.db")
    server = AdminServer(str(tmp_path / "run" / "tmd.sock"), lambda: open_store(store))
    server.start()
    client = ApiClient(server.path)
    try:
        reply = client.request("PUT", "/v1/instances/i-1",
                               {"mac": MAC, "vendor_data": nested(HOSTILE_DEPTH)})
        assert reply.status == 422, reply.body
        assert reply.body["field"] == "vendor_data"
        assert reply.body["error"] == f"record i-1, field 'vendor_data': {DEEP_JSON_PROBLEM}"
        assert client.request("GET", "/v1/instances/i-1").status == 404
    finally:
        client.close()
        server.stop()


def test_the_libvirt_hook_refuses_deep_metadata(tmp_path):
    store = str(tmp_path / "instances.db")
    xml = ("<domain><name>deep</name><metadata>"
           "<tmd:instance xmlns:tmd='urn:transparent-md:metadata:1'>"
           + json.dumps({"vendor_data": nested(HOSTILE_DEPTH)})
           + "</tmd:instance></metadata><devices><interface type='bridge'>"
           f"<mac address='{MAC}'/><source bridge='br0'/><target dev='vnet0'/>"
           "</interface></devices></domain>")
    res = subprocess.run([sys.executable, "-m", "transparent_md", "libvirt-hook", "--store",
                          store, "deep", "start", "begin", "-"], input=xml, text=True,
                         capture_output=True, timeout=60, env={**os.environ, "PYTHONPATH": REPO})
    assert_one_line_refusal(res)
    assert DEEP_JSON_PROBLEM in res.stderr


def test_a_deep_record_stored_before_the_limit_is_one_line_and_not_served(tmp_path, caplog):
    """Written by an older version (or around our tools): reading it says what to do, in
    one line; the responder does not serve it (and logs that once)."""
    import sqlite3

    from transparent_md.daemon.store_source import open_serving_store
    from transparent_md.identity import Guest

    store = str(tmp_path / "instances.db")
    db = open_store(store)
    db.add(parse_record({"instance_id": "i-1", "mac": MAC}))
    db.close()
    raw = sqlite3.connect(store)
    record = json.loads(raw.execute("SELECT record FROM instances").fetchone()[0])
    raw.execute("UPDATE instances SET record = ?",
                (json.dumps({**record, "vendor_data": nested(HOSTILE_DEPTH)}),))
    raw.commit()
    raw.close()
    for argv in (["instance", "show", "i-1"], ["instance", "list"]):
        res = cli(*argv, "--store", store)
        assert_one_line_refusal(res)
        assert DEEP_JSON_PROBLEM in res.stderr and "instance remove i-1" in res.stderr
    serving = open_serving_store(store)
    guest = Guest(bridge="br0", port="p0", ifindex=2, mac=MAC, ip="10.0.0.2")
    assert serving.entry_for(guest) is None and serving.entry_for(guest) is None
    serving.close()
    assert sum("not serving: store" in r.getMessage() for r in caplog.records) == 1
    assert cli("instance", "remove", "i-1", "--store", store).returncode == 0
