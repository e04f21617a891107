"""Red team, issue 20 follow-up: records edited while a guest keeps a connection open.

The responder decides once per connection whether a guest asking with a MAC locked to
another port may be answered at all (only if the record it matches is bound to the port
it asks from); the record it matches is looked up again at every store change. The two
must move together: when the store changes under an open keep-alive connection, the
connection may not keep a permission that was granted for a record it no longer matches.

The attack: the victim's record is bound by MAC and bridge (carrying IAM credentials and
user-data) and the victim holds its MAC's lock. The attacker's own record is bound to
the attacker's port and carries the victim's MAC (a tenant that sets its VM's MAC in
its VM's configuration, which the VM manager's hook copies into the record). The
attacker opens one keep-alive connection from its port with that MAC and its own IP and
is answered with its own record: allowed, that record is bound to the port it asks
from. Then its record is removed or parked (the tenant deletes it, the VM manager parks
it) while the connection stays open: the guest (its port, the victim's MAC, its IP) now
matches the victim's record by MAC and bridge, and the same connection must get 404, as
a new connection does. It used to read the victim's instance-id, user-data and IAM
credentials for as long as the connection lasted (up to --keepalive-time): the
permission was decided once, when the connection was accepted.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.conftest import write_records
from tests.hostile.test_lock_lifecycle import IAM_PATH, assert_served, secret_record, secrets_of
from tests.hostile.world import build_world

pytestmark = pytest.mark.netns

# A keep-alive client in the attacker's namespace: one HTTP/1.1 connection, one GET per
# line of stdin, one JSON line [status, body] per GET on stdout.
KEEPALIVE_CLIENT = r"""
import http.client, json, sys
conn = http.client.HTTPConnection("169.254.169.254", 80, timeout=5)
for line in sys.stdin:
    conn.request("GET", line.strip())
    reply = conn.getresponse()
    body = reply.read().decode(errors="replace")
    sys.stdout.write(json.dumps([reply.status, body, reply.getheader("Connection")]) + "\n")
    sys.stdout.flush()
"""
# How long the daemon may take to see a store change (a new connection gets 404).
STORE_CHANGE_S = 10.0


class KeepAlive:
    """One open keep-alive connection from a guest namespace."""

    def __init__(self, w, ns: str) -> None:
        self.proc = w.topo.spawn(ns, ["python3", "-c", KEEPALIVE_CLIENT], stdin=-1,
                                 stdout=-1, text=True)

    def get(self, path: str) -> tuple[int, str]:
        self.proc.stdin.write(path + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "the keep-alive client died"
        status, body, _ = json.loads(line)
        return status, body

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def world(topology, tmp_path_factory):
    w = build_world(topology, tmp_path_factory.mktemp("keepalive"))
    victim = w.add_guest("victim", "br0", record=False)
    write_records(w.store, [secret_record("victim", victim)])
    w.start()
    yield w
    w.stop()


@pytest.mark.parametrize("edit", ["remove", "park"])
def test_a_keepalive_connection_loses_its_port_permission_with_its_record(world, edit):
    w = world
    victim = w.guests["victim"]
    assert_served(w, "victim")  # the victim holds its MAC's lock
    role, own = f"atk-{edit}", f"i-0atk-{edit}"
    attacker = w.add_guest(role, "br0", record=False, mac=victim.mac)
    added = w.cli("instance", "add", own, "--port", attacker.port,
                  "--bridge", "br0", "--mac", victim.mac, "--ip", attacker.ip,
                  "--store", w.store)
    assert added.returncode == 0, added.stderr
    deadline = time.monotonic() + STORE_CHANGE_S
    while w.curl(role)[0] != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert w.curl(role) == (200, own), w.log_tail()

    conn = KeepAlive(w, attacker.ns)
    try:
        assert conn.get("/latest/meta-data/instance-id") == (200, own)
        if edit == "remove":
            edited = w.cli("instance", "remove", own, "--store", w.store)
        else:
            edited = w.cli("instance", "park", own, "--store", w.store)
        assert edited.returncode == 0, edited.stderr
        # A new connection sees the change: the MAC is locked to the victim's port.
        deadline = time.monotonic() + STORE_CHANGE_S
        while w.curl(role)[0] == 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert w.curl(role)[0] == 404
        # The old connection must not read the victim's record now.
        got = {path: conn.get(path) for path in (
            "/latest/meta-data/instance-id", "/latest/user-data",
            IAM_PATH + secrets_of("victim")["role"])}
    finally:
        conn.close()
    needles = [v.strip() for v in secrets_of("victim").values()]
    leaked = {p: r for p, r in got.items() if r[0] == 200 or any(n in r[1] for n in needles)}
    assert leaked == {}, leaked
    assert_served(w, "victim")
