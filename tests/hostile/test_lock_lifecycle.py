"""Issue 20, items 3 and 5: MAC locks outlive the daemon, and a neighbour holding an
unbound record's lock denies its owner only while the neighbour's port exists.

Records here are bound by MAC and bridge only (the README's quick start), carrying IAM
credentials and user-data. One daemon serves the whole module; it is stopped with
SIGTERM and killed with SIGKILL and started again in between.

* The victim asks first and holds its MAC's lock. After each restart `identity locks`
  shows the same locks, a neighbour copying the victim's MAC and IP (asking before the
  victim asks again: the window a forgetful restart would reopen) reads nothing of the
  victim's, and the victim is still served.
* A squatter copies the owner's MAC and IP and asks before the owner ever did (the
  residual risk of unbound records: it reads the record). The owner is refused and waits
  in line (a logged, counted conflict). When the squatter's port goes, the owner is
  served within the documented bound, and the squatter, back on a new link with the old
  port name and retrying once a second, gets nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.conftest import write_records
from tests.hostile.test_forgery import EC2_EXTRA, OPENSTACK_FILES, OPENSTACK_VERSIONS, TOKEN_TTL
from tests.hostile.world import METADATA_ROUTE, build_world, metric_value

pytestmark = pytest.mark.netns

# docs/hostile-guests.md (MAC lock): once the holding port has gone, its waiting owner
# is served within this.
HANDOVER_BOUND_S = 2.0
# How long the squatter keeps retrying once a second after it lost the lock.
RETRY_S = 6
IAM_PATH = "/latest/meta-data/iam/security-credentials/"


def secrets_of(role: str) -> dict[str, str]:
    return {"instance_id": f"i-0{role}", "user_data": f"#cloud-config\n# {role}-user-data\n",
            "access_key_id": f"ASIA{role.upper():0<16}"[:20],
            "secret_access_key": f"{role}/secret/access/key", "token": f"{role}-token",
            "role": f"{role}-role"}


def secret_record(role: str, guest) -> dict:
    s = secrets_of(role)
    return {"instance_id": s["instance_id"], "mac": guest.mac, "bridge": guest.bridge,
            "hostname": f"{role}-host", "user_data": s["user_data"],
            "iam": {"role": s["role"], "access_key_id": s["access_key_id"],
                    "secret_access_key": s["secret_access_key"], "token": s["token"],
                    "expiration": "2099-01-01T00:00:00Z"}}


# The paths that carry the record's secrets, on both trees.
SECRET_PATHS = ("/latest/meta-data/instance-id", "/latest/user-data", IAM_PATH,
                *EC2_EXTRA, *(f"/openstack/{v}/{f}" for v in OPENSTACK_VERSIONS
                              for f in OPENSTACK_FILES))


@pytest.fixture(scope="module")
def world(topology, tmp_path_factory):
    w = build_world(topology, tmp_path_factory.mktemp("locks"))
    for role in ("victim", "owner"):
        guest = w.add_guest(role, "br0", record=False)
        write_records(w.store, [secret_record(role, guest)])
    w.add_guest("other", "br1")
    w.start()
    yield w
    w.stop()


def identity(w, *args: str) -> subprocess.CompletedProcess:
    """`transparent-md identity ARGS` where the daemon's pins are visible (its mount
    namespace: `ip netns exec` gave it a /sys of its own)."""
    return subprocess.run(["nsenter", "-t", str(w.daemon.proc.pid), "-m", "-n",
                           sys.executable, "-m", "transparent_md", "identity", *args],
                          capture_output=True, text=True, timeout=60)


def locks_now(w) -> list[tuple[str, str, str]]:
    listed = identity(w, "locks", "--json")
    assert listed.returncode == 0, listed.stderr
    return [(lock["mac"], lock["port"], lock["bridge"]) for lock in json.loads(listed.stdout)]


def waiting_for(w, mac: str) -> list[str]:
    """The ports `identity locks` shows in line for `mac`."""
    listed = json.loads(identity(w, "locks", "--json").stdout)
    return [waiter["port"] for lock in listed if lock["mac"] == mac for waiter in lock["waiting"]]


def read_everything(w, role: str, of: str) -> dict[str, tuple[int, str]]:
    """Every path of `of`'s secrets, asked from `role`, with and without an IMDSv2 token."""
    paths = (*SECRET_PATHS, IAM_PATH + secrets_of(of)["role"])
    got = {path: w.curl(role, path) for path in paths}
    ns = w.guests[role].ns
    token = w.hv.curl(ns, "/latest/api/token", extra=["-X", "PUT", "-H", TOKEN_TTL])
    if token[0] == 200:  # a token is no secret; what it reads is
        header = ["-H", f"X-aws-ec2-metadata-token: {token[1]}"]
        for path in ("/latest/meta-data/instance-id", "/latest/user-data", paths[-1]):
            got[f"{path} (token)"] = w.hv.curl(ns, path, extra=header)
    return got


def leaks(got: dict[str, tuple[int, str]], owner: str) -> list:
    needles = [v.strip() for v in secrets_of(owner).values()]
    return [(path, status) for path, (status, body) in got.items()
            if status == 200 or any(n in body for n in needles)]


def assert_served(w, role: str) -> None:
    s = secrets_of(role)
    assert w.curl(role) == (200, s["instance_id"]), w.log_tail()
    status, creds = w.curl(role, IAM_PATH + s["role"])
    assert status == 200 and s["secret_access_key"] in creds, (status, creds)


def restart(w, kill: bool) -> None:
    if kill:
        w.daemon.kill()
        w.daemon = None
    else:
        w.stop()
    w.start()


@pytest.mark.parametrize("how", ["sigterm", "kill9"])
def test_locks_survive_a_restart_and_the_copier_reads_nothing(world, how):
    w = world
    victim = w.guests["victim"]
    assert_served(w, "victim")  # the victim asks first: its MAC is locked to its port
    before = locks_now(w)
    assert (victim.mac, victim.port, "br0") in before

    restart(w, kill=how == "kill9")
    assert locks_now(w) == before, w.log_tail()
    # A neighbour copies the victim's MAC and IP and asks before the victim does again.
    role = f"copier-{how}"
    copier = w.add_guest(role, "br0", record=False, mac=victim.mac, ip=victim.ip)
    assert copier.port != victim.port
    assert leaks(read_everything(w, role, "victim"), "victim") == []
    assert_served(w, "victim")
    assert leaks(read_everything(w, role, "victim"), "victim") == []


def test_a_squatter_denies_the_owner_only_while_its_port_exists(world):
    w = world
    owner = w.guests["owner"]
    # The squatter asks before the owner ever did: it takes the lock and reads the
    # record (the residual risk a port binding or MAC anti-spoofing closes).
    w.add_guest("squatter", "br0", record=False, mac=owner.mac, ip=owner.ip)
    assert w.curl("squatter") == (200, secrets_of("owner")["instance_id"])
    # The owner is refused while the squatter's port exists: a conflict, logged and
    # counted, and the owner waits in line.
    assert w.curl("owner")[0] == 404
    conflict = f"MAC lock conflict: port {owner.port} MAC {owner.mac} IP {owner.ip} asked"
    deadline = time.monotonic() + 10
    while conflict not in w.daemon.log() and time.monotonic() < deadline:
        assert w.curl("owner")[0] == 404
        time.sleep(0.5)
    assert conflict in w.daemon.log(), w.log_tail()
    assert waiting_for(w, owner.mac) == [owner.port]
    assert metric_value(w.metrics()[1], "transparent_md_mac_lock_conflicts_total") >= 1

    # The squatter's VM stops: its port goes. The owner is served within the bound.
    w.topo.ip(w.hv.ns, "link del psquatter")
    gone = time.monotonic()
    while (answer := w.curl("owner", timeout=1))[0] != 200 and \
            time.monotonic() - gone < HANDOVER_BOUND_S + 5:
        time.sleep(0.1)
    waited = time.monotonic() - gone
    assert answer == (200, secrets_of("owner")["instance_id"]), w.log_tail()
    assert waited <= HANDOVER_BOUND_S, f"owner served {waited:.2f} s after the port went"
    assert (owner.mac, owner.port, "br0") in locks_now(w)
    assert metric_value(w.metrics()[1], "transparent_md_mac_lock_handovers_total") >= 1

    # The squatter comes back on a new link with the old port name and retries once a
    # second: it gets nothing, and the owner is served throughout.
    back = w.hv.guest("squatter-back", bridge="br0", port="psquatter",
                      addr=f"{owner.ip}/24", routes=[METADATA_ROUTE], mac=owner.mac)
    w.guests["squatter-back"] = back
    for _ in range(RETRY_S):
        started = time.monotonic()
        assert leaks({"instance-id": w.curl("squatter-back")}, "owner") == []
        assert_served(w, "owner")
        time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
    assert leaks(read_everything(w, "squatter-back", "owner"), "owner") == []
    assert_served(w, "owner")
