"""Issue 20, items 1, 2 and 4, and the identity policy's statements (acceptance 6),
attacked from guest namespaces against one daemon.

Each test plays a hypervisor's day (a VM starts, stops, its tap goes away and its name
goes to another VM) with the libvirt hook run as libvirtd runs it, while a neighbour
copies the victim's MAC and IP at the worst moment. The neighbour must read nothing of
the victim's (instance-id, IAM credentials, user-data, OpenStack meta_data, the
password, nor be able to POST one), and the victim is served whenever its VM runs.
The last test proves, for each way a record can be bound, what docs/records.md
"Identity policy" says a neighbour needs to read it.
"""

from __future__ import annotations

import json

import pytest

from tests.hostile.world import build_world, domain_xml

pytestmark = pytest.mark.netns

ROLE = "lifecycle-role"
TOKEN_TTL = "X-aws-ec2-metadata-token-ttl-seconds: 21600"
PASSWORD_PATH = "/openstack/latest/password"


def secrets(name: str) -> dict:
    """A record's secrets, distinct per victim so a leak names its source."""
    return {
        "instance_id": f"i-{name}",
        "user_data": f"#cloud-config\nruncmd: [echo {name}-user-data-secret]\n",
        "iam": {"role": ROLE, "access_key_id": f"ASIA{name.upper()}KEY0001"[:20],
                "secret_access_key": f"{name}/secret/access/key",
                "token": f"{name}-session-token", "expiration": "2099-01-01T00:00:00Z"},
    }


def uuid_for(serial: int) -> str:
    return f"6c0f2a4e-9d3b-4a55-8e0a-{serial:012d}"


def needles(meta: dict, uuid: str | None = None) -> list[str]:
    found = [meta["instance_id"], meta["iam"]["secret_access_key"], meta["iam"]["token"],
             meta["iam"]["access_key_id"], meta["user_data"].splitlines()[1]]
    return found + ([uuid] if uuid else [])


PATHS = ("/latest/meta-data/instance-id", "/latest/meta-data/iam/security-credentials/",
         f"/latest/meta-data/iam/security-credentials/{ROLE}", "/latest/user-data",
         "/latest/dynamic/instance-identity/document", "/openstack/latest/meta_data.json",
         "/openstack/latest/user_data", PASSWORD_PATH)


def reads_nothing(w, role: str, leaks: list[str]) -> None:
    """`role` gets no 200 and not one secret on any path, with or without a token, and
    cannot POST a password."""
    ns = w.guests[role].ns
    got = {path: w.curl(role, path) for path in PATHS}
    token = w.hv.curl(ns, "/latest/api/token", extra=["-X", "PUT", "-H", TOKEN_TTL])
    if token[0] == 200:
        header = ["-H", f"X-aws-ec2-metadata-token: {token[1]}"]
        got.update({f"{p} (token)": w.hv.curl(ns, p, extra=header) for p in PATHS[:3]})
    posted = w.hv.curl(ns, PASSWORD_PATH, extra=["-X", "POST", "--data", f"{role}-pw"])
    problems = [(path, status, [n for n in leaks if n in body])
                for path, (status, body) in got.items()
                if status == 200 or any(n in body for n in leaks)]
    assert problems == [], f"{role} read: {problems}"
    assert posted[0] != 200, f"{role} posted a password: {posted}"


def served(w, role: str, meta: dict) -> None:
    assert w.curl(role) == (200, meta["instance_id"]), (role, w.log_tail())
    status, creds = w.curl(role, PATHS[2])
    assert status == 200 and meta["iam"]["secret_access_key"] in creds, (status, creds)
    assert w.curl(role, "/latest/user-data") == (200, meta["user_data"])


@pytest.fixture(scope="module")
def world(topology, tmp_path_factory):
    w = build_world(topology, tmp_path_factory.mktemp("lifecycle"))
    w.add_guest("bystander", "br1")  # a served guest on another bridge, throughout
    w.start()
    yield w
    w.stop()


def test_a_stopped_vm_serves_nobody_and_is_served_when_it_starts_again(world):
    """Item 1: the hook's default stop path, the window between prepare and started,
    and a start whose XML names no tap."""
    w = world
    meta = secrets("vm-a")
    mac, ip, tap = "52:54:00:20:01:01", w.next_ip("br0"), "vnet10"
    uuid = uuid_for(1)
    xml = domain_xml("vm-a", uuid, mac, "br0", tap, meta)
    leaks = needles(meta, uuid)

    # prepare: libvirt has not made the tap; a neighbour with the MAC and IP asks first.
    assert w.hook(xml, "vm-a", "prepare").returncode == 0
    w.add_guest("vm-a", record=False, mac=mac, ip=ip, port=tap)  # libvirt makes the tap
    w.add_guest("thief-a", record=False, mac=mac, ip=ip)
    reads_nothing(w, "thief-a", leaks)
    # A start whose XML names no tap parks the record and says so: still nobody.
    no_tap = w.hook(domain_xml("vm-a", uuid, mac, "br0", None, meta), "vm-a", "start")
    assert no_tap.returncode == 0 and "parked (served to nobody)" in no_tap.stderr
    reads_nothing(w, "thief-a", leaks)
    assert w.curl("vm-a")[0] == 404  # parked means nobody, the VM itself too
    # started: the record is bound to the VM's tap; the VM is served although the
    # thief took its MAC's lock first.
    started = w.hook(xml, "vm-a", "started")
    assert started.returncode == 0, started.stderr
    served(w, "vm-a", meta)
    reads_nothing(w, "thief-a", leaks)

    # The VM stops: the hook parks its record (default --on-stop), libvirt deletes the tap.
    for operation in ("stopped", "release"):
        assert w.hook(xml, "vm-a", operation, subop="end").returncode == 0
    w.remove_port(tap)
    reads_nothing(w, "thief-a", leaks)
    w.add_guest("thief-a2", record=False, mac=mac, ip=ip)  # a fresh port asking first
    reads_nothing(w, "thief-a2", leaks)

    # The VM starts again: libvirt makes vnet10 anew; served once `started` binds it.
    assert w.hook(xml, "vm-a", "prepare").returncode == 0
    w.add_guest("vm-a-again", record=False, mac=mac, ip=ip, port=tap)
    reads_nothing(w, "thief-a2", leaks)
    assert w.curl("vm-a-again")[0] == 404  # parked: the tap's name and the MAC get nothing
    assert w.hook(xml, "vm-a", "started").returncode == 0
    served(w, "vm-a-again", meta)
    posted = w.hv.curl(w.guests["vm-a-again"].ns, PASSWORD_PATH,
                       extra=["-X", "POST", "--data", "vm-a-password"])
    assert posted[0] == 200, posted
    assert w.curl("vm-a-again", PASSWORD_PATH) == (200, "vm-a-password")
    reads_nothing(w, "thief-a", [*leaks, "vm-a-password"])
    reads_nothing(w, "thief-a2", [*leaks, "vm-a-password"])
    w.assert_serves("bystander")


def test_a_reused_tap_name_inherits_no_binding(world):
    """Item 2: the VM stops without its record being parked (--on-stop keep: the hook
    writes nothing), libvirt gives its tap's name to another VM that copies the MAC and
    IP. The binding named the old link: the newcomer reads nothing and cannot POST the
    password; the real VM, back on another tap, is served and POSTs its own."""
    w = world
    meta = secrets("vm-b")
    mac, ip = "52:54:00:20:02:01", w.next_ip("br0")
    uuid = uuid_for(2)
    leaks = needles(meta, uuid)
    xml = domain_xml("vm-b", uuid, mac, "br0", "vnet20", meta)
    w.add_guest("vm-b", record=False, mac=mac, ip=ip, port="vnet20")
    assert w.hook(xml, "vm-b", "started").returncode == 0
    served(w, "vm-b", meta)

    assert w.hook(xml, "vm-b", "stopped", "--on-stop", "keep", subop="end").returncode == 0
    w.remove_port("vnet20")
    w.add_guest("thief-b", record=False, mac=mac, ip=ip, port="vnet20")  # the name, reused
    reads_nothing(w, "thief-b", leaks)

    back = domain_xml("vm-b", uuid, mac, "br0", "vnet21", meta)
    w.add_guest("vm-b-again", record=False, mac=mac, ip=ip, port="vnet21")
    assert w.hook(back, "vm-b", "started").returncode == 0
    served(w, "vm-b-again", meta)
    posted = w.hv.curl(w.guests["vm-b-again"].ns, PASSWORD_PATH,
                       extra=["-X", "POST", "--data", "vm-b-password"])
    assert posted[0] == 200, posted  # not 409: no one posted before it
    assert w.curl("vm-b-again", PASSWORD_PATH) == (200, "vm-b-password")
    reads_nothing(w, "thief-b", [*leaks, "vm-b-password"])
    w.assert_serves("bystander")


def test_secrets_matched_by_ip_alone_are_refused_and_a_neighbour_adding_the_ip_reads_nothing(
        world, tmp_path):
    """Item 4: an IP+bridge record with secrets is refused by every CLI writer with one
    line; the victim's record must carry its MAC, and then a neighbour that keeps its
    own MAC and adds the victim's IP reads nothing, even after the victim asked."""
    w = world
    meta = secrets("vm-c")
    ip = w.next_ip("br0")
    (tmp_path / "iam.json").write_text(json.dumps(meta["iam"]))
    (tmp_path / "ud").write_text(meta["user_data"])
    ip_only = {"instance_id": meta["instance_id"], "ip": ip, "bridge": "br0",
               "iam": meta["iam"], "user_data": meta["user_data"]}
    (tmp_path / "ip-only.json").write_text(json.dumps([ip_only]))
    attempts = {
        "add": w.cli("instance", "add", meta["instance_id"], "--ip", ip, "--bridge", "br0",
                     "--iam-file", str(tmp_path / "iam.json"), "--store", w.store),
        "import": w.cli("instance", "import", str(tmp_path / "ip-only.json"),
                        "--store", w.store),
        "apply": w.cli("instance", "apply", str(tmp_path / "ip-only.json"),
                       "--store", w.store),
    }
    for verb, result in attempts.items():
        assert result.returncode == 2, (verb, result.stderr)
        assert "needs its MAC" in result.stderr and "adds the IP" in result.stderr, verb
        assert "Traceback" not in result.stderr
    assert attempts["add"].stderr.count("\n") == 1  # one line
    victim = w.add_guest("vm-c", record=False, ip=ip)
    added = w.cli("instance", "add", meta["instance_id"], "--mac", victim.mac, "--ip", ip,
                  "--bridge", "br0", "--iam-file", str(tmp_path / "iam.json"),
                  "--user-data-file", str(tmp_path / "ud"), "--store", w.store)
    assert added.returncode == 0, added.stderr
    assert f"sends from MAC {victim.mac} and IP {ip}" in added.stderr  # what it takes
    # Taking the MAC away again is refused the same way.
    cleared = w.cli("instance", "update", meta["instance_id"], "--clear", "mac",
                    "--store", w.store)
    assert cleared.returncode == 2 and "needs its MAC" in cleared.stderr
    served(w, "vm-c", meta)
    w.add_guest("thief-c", record=False, ip=ip)  # its own MAC, the victim's IP
    reads_nothing(w, "thief-c", needles(meta))
    served(w, "vm-c", meta)


def test_what_a_neighbour_needs_for_each_kind_of_binding(world):
    """docs/records.md "Identity policy", statement by statement:
    * port-bound: being on that link; a copy of MAC and IP elsewhere reads nothing
      (and a new link with the name neither: test_a_reused_tap_name_inherits_no_binding);
    * MAC+bridge: on that bridge, the MAC and the IP, asking while no port holds the
      MAC's lock; from another bridge, nothing;
    * MAC only: the MAC and the IP, on any bridge, asking while no port holds the lock;
    * IP+bridge (no secrets allowed): the IP, on that bridge, whatever its MAC;
    * parked: nothing gets it.
    """
    w = world
    kinds = {
        "port": {"mac": "52:54:00:20:04:01", "bridge": "br0", "port": "vnet40"},
        "macbridge": {"mac": "52:54:00:20:04:02", "bridge": "br0"},
        "macbridge2": {"mac": "52:54:00:20:04:05", "bridge": "br0"},
        "maconly": {"mac": "52:54:00:20:04:03"},
        "parked": {"mac": "52:54:00:20:04:04", "bridge": "br0", "parked": True},
    }
    ips = {kind: w.next_ip("br0") for kind in kinds}
    ip_bridge = w.next_ip("br0")
    records = [{"instance_id": f"i-{kind}", "ip": ips[kind], **fields,
                "user_data": f"#cloud-config\n# {kind}-secret\n"}
               for kind, fields in kinds.items()]
    records.append({"instance_id": "i-ipbridge", "ip": ip_bridge, "bridge": "br0"})
    owner = w.add_guest("owner-port", record=False, mac=kinds["port"]["mac"],
                        ip=ips["port"], port="vnet40")
    imported = w.cli("instance", "import", "-", "--store", w.store, stdin=json.dumps(records))
    assert imported.returncode == 0, imported.stderr

    # Port-bound: the owner is served; a copy of its MAC and IP on another port, asking
    # first or not, reads nothing.
    assert w.curl("owner-port") == (200, "i-port")
    w.add_guest("cpo", record=False, mac=owner.mac, ip=owner.ip)
    assert w.curl("cpo")[0] == 404
    # MAC+bridge: from another bridge, the MAC and IP read nothing, even asking first
    # (a record of its own, so no lock is involved); on the bridge, asking before the
    # owner ever did (no port holds the lock), they read it.
    w.add_guest("cmb-br1", "br1", record=False, mac=kinds["macbridge2"]["mac"],
                ip=ips["macbridge2"])
    assert w.curl("cmb-br1")[0] == 404
    w.add_guest("cmb", record=False, mac=kinds["macbridge"]["mac"],
                ip=ips["macbridge"])
    assert w.curl("cmb") == (200, "i-macbridge")  # the documented residual
    # ... and with its own MAC, the IP alone reads nothing.
    w.add_guest("imb", record=False, ip=ips["macbridge"])
    assert w.curl("imb")[0] == 404
    # MAC only: any served bridge will do.
    w.add_guest("cmo-br1", "br1", record=False, mac=kinds["maconly"]["mac"],
                ip=ips["maconly"])
    assert w.curl("cmo-br1") == (200, "i-maconly")
    # IP+bridge: the IP on that bridge, with any MAC (so no secrets may be in it) ...
    w.add_guest("iib", record=False, ip=ip_bridge)
    assert w.curl("iib") == (200, "i-ipbridge")
    assert w.curl("iib", "/latest/user-data")[0] == 404
    # ... and on another bridge, nothing.
    w.add_guest("iib-br1", "br1", record=False, ip=ip_bridge)
    assert w.curl("iib-br1")[0] == 404
    # Parked: the MAC and IP on its bridge, asking first, read nothing.
    w.add_guest("cpk", record=False, mac=kinds["parked"]["mac"], ip=ips["parked"])
    assert w.curl("cpk")[0] == 404
    assert w.curl("cpk", "/latest/user-data")[0] == 404
    assert w.curl("owner-port") == (200, "i-port")
    w.assert_serves("bystander")
