"""Acceptance 4: a guest copying its neighbour's MAC and IP reads none of its data.

The victim's record is added exactly as the README's quick start shows
(`instance add ID --mac MAC --bridge br0 ...`, here with IAM credentials and
user-data too). The victim asks first; then a guest on another port of the same
bridge takes the victim's MAC and IP and asks for every EC2 and OpenStack path the
victim could read (with and without an IMDSv2 token). It must get 404 and not one
byte of the victim's data, and the victim must still be served. A record with
neither a MAC nor a bridge/port binding is refused with the reason.
"""

from __future__ import annotations

import json

import pytest

from tests.hostile.world import build_world, run_cli
from transparent_md.lab.bench.cloudinit import listing_children

pytestmark = pytest.mark.netns

VICTIM_ID = "i-0victim000000001"
SECRETS = {
    "hostname": "victim-web-1",
    "ssh": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIVictimVictimVictimA victim@example",
    "user_data": "#cloud-config\nruncmd: [echo victim-user-data-secret]\n",
    "access_key_id": "ASIAVICTIMVICTIM0001",
    "secret_access_key": "victim/secret/access/key/0123456789abcdef",
    "token": "victim-session-token-0123456789",
    "role": "victim-role",
}
OPENSTACK_VERSIONS = ("latest", "2012-08-10", "2018-08-27")
OPENSTACK_FILES = ("", "meta_data.json", "user_data", "vendor_data.json", "vendor_data2.json",
                   "network_data.json", "password")
EC2_EXTRA = ("/latest/user-data", "/latest/dynamic/instance-identity/document",
             "/latest/dynamic/instance-identity/", "/2009-04-04/meta-data/instance-id",
             "/latest/meta-data/iam/security-credentials/" + SECRETS["role"],
             "//latest/meta-data/instance-id")
TOKEN_TTL = "X-aws-ec2-metadata-token-ttl-seconds: 21600"
# Bound on the victim's tree walk (a listing naming itself is a responder bug).
MAX_PATHS = 300


@pytest.fixture(scope="module")
def world(datapath_topology, tmp_path_factory, datapath):
    tmp = tmp_path_factory.mktemp("forgery")
    w = build_world(datapath_topology, tmp, datapath)
    victim = w.add_guest("victim", "br0", record=False)
    (tmp / "user-data.yaml").write_text(SECRETS["user_data"])
    (tmp / "iam.json").write_text(json.dumps({
        "role": SECRETS["role"], "access_key_id": SECRETS["access_key_id"],
        "secret_access_key": SECRETS["secret_access_key"], "token": SECRETS["token"],
        "expiration": "2099-01-01T00:00:00Z"}))
    # The README's quick start, plus credentials: MAC and bridge, no port binding.
    added = run_cli("instance", "add", VICTIM_ID, "--mac", victim.mac, "--bridge", "br0",
                    "--hostname", SECRETS["hostname"], "--ssh-key", f"me={SECRETS['ssh']}",
                    "--user-data-file", str(tmp / "user-data.yaml"),
                    "--iam-file", str(tmp / "iam.json"), "--store", w.store)
    assert added.returncode == 0, added.stderr
    w.add_guest("other", "br1")  # the store needs more than one guest to mean anything
    w.start()
    yield w
    w.stop()


def ec2_paths(w, role: str) -> list[str]:
    """Every path of the EC2 meta-data tree as `role` sees it (walking the listings)."""
    paths, queue = [], ["/latest/meta-data/"]
    while queue and len(paths) < MAX_PATHS:
        directory = queue.pop(0)
        paths.append(directory)
        status, body = w.curl(role, directory)
        assert status == 200, (directory, status, body)
        for child in listing_children(body.encode()):
            (queue if child.endswith("/") else paths).append(directory + child)
    return paths


def all_paths(ec2: list[str]) -> list[str]:
    openstack = ["/openstack", "/openstack/"] + [
        f"/openstack/{v}/{f}" for v in OPENSTACK_VERSIONS for f in OPENSTACK_FILES]
    return ["/", "/latest/", *ec2, *EC2_EXTRA, *openstack]


def leaked(body: str) -> list[str]:
    needles = {**SECRETS, "instance_id": VICTIM_ID}
    return [k for k, v in needles.items() if v.strip() and v.strip() in body]


def test_forger_on_another_port_gets_nothing_of_the_victim(world):
    w = world
    victim = w.guests["victim"]
    # The victim asks first, and reads its secrets (so the comparison means something).
    assert w.curl("victim") == (200, VICTIM_ID)
    ec2 = ec2_paths(w, "victim")
    seen = {path: w.curl("victim", path) for path in all_paths(ec2)}
    assert {k for body in (b for _, b in seen.values()) for k in leaked(body)} >= {
        "instance_id", "hostname", "ssh", "user_data", "access_key_id",
        "secret_access_key", "token"}, "the victim itself should see all its secrets"

    forger = w.add_guest("forger", "br0", record=False, mac=victim.mac, ip=victim.ip)
    assert forger.port != victim.port and forger.mac == victim.mac
    got = {path: w.curl("forger", path) for path in all_paths(ec2)}
    token = w.hv.curl(forger.ns, "/latest/api/token", extra=["-X", "PUT", "-H", TOKEN_TTL])
    with_token = {}
    if token[0] == 200:
        header = f"X-aws-ec2-metadata-token: {token[1]}"
        with_token = {p: w.hv.curl(forger.ns, p, extra=["-H", header]) for p in ec2}
    problems = [(path, status, leaked(body)) for path, (status, body) in
                [*got.items(), *with_token.items()] if leaked(body) or status == 200]
    assert problems == [], f"forger read: {problems[:10]} (token PUT {token[0]})"
    assert all(status == 404 for status, _ in got.values()), sorted(
        {(p, s) for p, (s, _) in got.items() if s != 404})
    # ... and the victim is still served, whole.
    assert w.curl("victim") == (200, VICTIM_ID)
    status, creds = w.curl("victim", EC2_EXTRA[4])
    assert status == 200 and SECRETS["secret_access_key"] in creds


def test_unbound_ip_only_record_is_refused_with_the_reason(world):
    res = run_cli("instance", "add", "i-0iponly", "--ip", "10.0.0.99",
                  "--user-data-file", "/dev/null", "--store", world.store)
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    reason = res.stderr.lower()
    assert "bridge" in reason and "mac" in reason and "every bridge" in reason, res.stderr
    listed = run_cli("instance", "list", "--store", world.store)
    assert "i-0iponly" not in listed.stdout


# Copies of part of the victim's identity: (bridge, copy its MAC, copy its IP).
FORGERIES = {
    "ip-only": ("br0", False, True),
    "mac-only": ("br0", True, False),
    "other-bridge": ("br1", True, True),
}


@pytest.mark.parametrize("form", sorted(FORGERIES))
def test_partial_and_other_bridge_copies_read_nothing(world, form):
    """IP alone, MAC alone, or both from another bridge: 404 everywhere, not one byte
    of the victim's, and the victim still served."""
    w = world
    victim = w.guests["victim"]
    assert w.curl("victim") == (200, VICTIM_ID)
    bridge, copy_mac, copy_ip = FORGERIES[form]
    role = f"f{form.replace('-', '')}"[:10]
    w.add_guest(role, bridge, record=False, mac=victim.mac if copy_mac else None,
                ip=victim.ip if copy_ip else None)
    got = {path: w.curl(role, path) for path in all_paths(["/latest/meta-data/",
                                                            "/latest/meta-data/hostname"])}
    problems = [(path, status, leaked(body)) for path, (status, body) in got.items()
                if leaked(body) or status == 200]
    assert problems == [], f"{form} forger read: {problems[:10]}"
    assert w.curl("victim") == (200, VICTIM_ID)
