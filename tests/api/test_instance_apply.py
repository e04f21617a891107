"""`instance apply` (acceptance 4: twice on one file, the second run changes nothing and
exits 0), --dry-run, --prune, and `instance bind/unbind` through the store and the API."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from transparent_md.api.server import AdminServer
from transparent_md.store import open_store

FLEET = [
    {"instance_id": "web-1", "mac": "52:54:00:00:00:01", "bridge": "br0",
     "user_data": "#cloud-config\nhostname: web-1\n"},
    {"instance_id": "web-2", "mac": "52:54:00:00:00:02", "bridge": "br0",
     "hostname": "web-2"},  # spelled out: equal to the default, still "no change"
]


def cli(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "transparent_md", "instance", *argv],
                          input=stdin, capture_output=True, text=True, timeout=60)


@pytest.fixture
def fleet(tmp_path):
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(FLEET, sort_keys=False))
    return str(path), str(tmp_path / "instances.db")


def revisions(store_path: str) -> dict[str, int]:
    store = open_store(store_path)
    try:
        return {e.instance.instance_id: e.revision for e in store.entries()}
    finally:
        store.close()


def test_apply_twice_reports_no_change_the_second_time(fleet):
    path, store = fleet
    first = cli("apply", path, "--store", store)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == ["create web-1", "create web-2",
                                         "2 to create, 0 to update, 0 to remove, 0 unchanged"]
    before = revisions(store)
    second = cli("apply", path, "--store", store, "--exit-code")
    assert second.returncode == 0, second.stdout + second.stderr
    assert second.stdout.splitlines() == ["0 to create, 0 to update, 0 to remove, 2 unchanged"]
    assert revisions(store) == before  # nothing rewritten


def test_apply_updates_prunes_and_dry_runs(fleet, tmp_path):
    path, store = fleet
    cli("apply", path, "--store", store)
    cli("add", "stray", "--mac", "52:54:00:00:00:99", "--store", store)
    changed = [dict(FLEET[0], hostname="web-one")]
    text = yaml.safe_dump(changed)
    dry = cli("apply", "-", "--store", store, "--prune", "--dry-run", "--exit-code",
              stdin=text)
    assert dry.returncode == 1
    assert dry.stdout.splitlines() == ["dry run, nothing written:", "update web-1 (hostname)",
                                       "remove stray", "remove web-2",
                                       "0 to create, 1 to update, 2 to remove, 0 unchanged"]
    assert set(revisions(store)) == {"stray", "web-1", "web-2"}
    done = cli("apply", "-", "--store", store, "--prune", stdin=text)
    assert done.returncode == 0 and "update web-1 (hostname)" in done.stdout
    assert set(revisions(store)) == {"web-1"}
    assert cli("apply", "-", "--store", store, "--prune", stdin=text).stdout.splitlines() == [
        "0 to create, 0 to update, 0 to remove, 1 unchanged"]


def test_apply_refuses_an_invalid_file_whole(fleet, tmp_path):
    path, store = fleet
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump([*FLEET, {"instance_id": "x", "mac": "zz"}]))
    result = cli("apply", str(bad), "--store", store)
    assert result.returncode == 2 and "record #3 (x), field 'mac'" in result.stderr
    assert revisions(store) == {}


def test_bind_park_and_unbind_through_the_store_and_the_api(fleet, tmp_path):
    """`lo` is a link of every namespace (ifindex 1): bind names it; park and its older
    name unbind keep the record and serve it to nobody."""
    path, store = fleet
    cli("apply", path, "--store", store)
    bound = cli("bind", "web-1", "--port", "lo", "--store", store)
    assert bound.returncode == 0, bound.stderr
    record = open_store(store).get("web-1")
    assert (record.port, record.port_ifindex, record.parked) == ("lo", 1, False)
    absent = cli("bind", "web-1", "--port", "tmd-nolink0", "--store", store)
    assert absent.returncode == 2 and "no link named 'tmd-nolink0'" in absent.stderr
    assert absent.stderr.count("\n") == 1 and "Traceback" not in absent.stderr
    server = AdminServer(str(tmp_path / "api.sock"), lambda: open_store(store))
    server.start()
    try:
        assert cli("unbind", "web-1", "--api", server.path).returncode == 0
        assert open_store(store).get("web-1").parked
        assert cli("bind", "web-1", "--port", "lo", "--api", server.path).returncode == 0
        assert not open_store(store).get("web-1").parked
        assert cli("park", "web-1", "--store", store).returncode == 0
        assert open_store(store).get("web-1").parked
        assert cli("bind", "web-2", "--port", "lo", "--api", server.path).returncode == 0
        assert open_store(store).get("web-2").port_ifindex == 1
        missing = cli("bind", "nope", "--port", "lo", "--api", server.path)
        assert missing.returncode == 2 and "no instance 'nope'" in missing.stderr
        absent = cli("bind", "web-2", "--port", "tmd-nolink0", "--api", server.path)
        assert absent.returncode == 2 and "no link named 'tmd-nolink0'" in absent.stderr
        assert cli("unbind", "nope", "--api", server.path).returncode == 0
        assert cli("park", "nope", "--api", server.path, "--strict").returncode == 2
        listed = cli("list", "--store", store)
        assert "parked" in listed.stdout and "link lo#1" in listed.stdout, listed.stdout
    finally:
        server.stop()
