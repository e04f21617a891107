"""Acceptance 5: each bad input gets its clear refusal, and the daemon keeps serving.

- a YAML alias bomb given to `instance import`: refused at once, in bounded memory;
- 1,000 headers totalling 100 KB: 431 reaches the client (not a reset);
- a 1 MiB body: 413 reaches the client, which finishes sending and sees a clean close
  (the responder reads and drops the rest: without that the client meets a reset,
  even though a client reading while it sends, as this one does, still sees the 413);
- a guest's ARP replies claiming 169.254.169.254 or the segment's gateway: never seen
  by a neighbour, whose neighbour entries stay as they were (its claim of its own
  address, sent alongside, is seen: the capture works).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest

from tests.hostile.world import GATEWAY, build_world
from transparent_md.lab.attacks.launch import run_tool

pytestmark = pytest.mark.netns

# The classic "billion laughs" in YAML: 324 bytes that expand to 10^9 list items.
ALIAS_BOMB = """\
- &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
- &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
- &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
- &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
- &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
- &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
- &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
- &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
- &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""
# The import is run with its address space capped, so a regression cannot take the
# machine's memory with it (Python with its imports maps ~0.5 GB of address space).
IMPORT_ADDRESS_SPACE = 2 << 30
IMPORT_TIMEOUT_S = 30
# The bound on memory for refusing the bomb.
IMPORT_MAX_RSS_MIB = 100
# Reports the peak RSS of the command it runs (its child), in KiB, on its last line.
PEAK_RSS_WRAPPER = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
                    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
                    "sys.exit(r.returncode)")
MANY_HEADERS = 1000
HEADER_BYTES = 100
BODY_BYTES = 1 << 20
TOOL_TIMEOUT_S = 30
# Linux ignores a neighbour entry override within 1 s of its last update (locktime):
# wait past it, so a claim that got through would show in the table.
NEIGH_LOCKTIME_S = 1.2
CAPTURE_READY_TIMEOUT_S = 10


@pytest.fixture(scope="module")
def world(topology, tmp_path_factory):
    w = build_world(topology, tmp_path_factory.mktemp("bad"))
    w.add_guest("attacker", "br0")
    # The neighbour reaches the metadata address on-link and everything else through
    # the segment's gateway (answered by the daemon's --gateway rule).
    w.add_guest("neighbour", "br0",
                routes=["169.254.169.254/32 dev eth0", f"default via {GATEWAY['br0']}"])
    w.add_guest("bystander", "br1")
    w.start()
    yield w
    w.stop()


def test_yaml_alias_bomb_is_refused_quickly_in_bounded_memory(world, tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(ALIAS_BOMB)
    started = time.monotonic()
    res = world.topo.sh(world.hv.ns, [
        "prlimit", f"--as={IMPORT_ADDRESS_SPACE}", sys.executable, "-c", PEAK_RSS_WRAPPER,
        sys.executable, "-m", "transparent_md", "instance", "import", str(bomb),
        "--store", world.store], timeout=IMPORT_TIMEOUT_S)
    elapsed = time.monotonic() - started
    assert res.returncode != 0, res.stdout
    assert "Traceback" not in res.stderr and "MemoryError" not in res.stderr, res.stderr
    assert re.search(r"alias|anchor", res.stderr, re.I), res.stderr
    peak_mib = int(res.stdout.split()[-1]) / 1024
    print(f"alias bomb refused in {elapsed:.2f} s (with interpreter start), "
          f"peak RSS {peak_mib:.0f} MiB: {res.stderr.strip()}")
    assert peak_mib < IMPORT_MAX_RSS_MIB, peak_mib
    world.assert_serves("attacker")


def test_a_thousand_headers_get_431_not_a_reset(world):
    got = run_tool(world.topo, world.guests["attacker"].ns, "oversize",
                   ["--headers", str(MANY_HEADERS), "--header-bytes", str(HEADER_BYTES)],
                   TOOL_TIMEOUT_S)
    assert got["sent_bytes"] >= MANY_HEADERS * HEADER_BYTES
    assert got["status"] == 431, json.dumps(got)
    assert not got["reset"] and got["send_error"] is None, json.dumps(got)
    world.assert_serves("attacker")
    world.assert_serves("neighbour")


def test_a_one_mib_body_gets_413_not_a_reset(world):
    got = run_tool(world.topo, world.guests["attacker"].ns, "oversize",
                   ["--body", str(BODY_BYTES)], TOOL_TIMEOUT_S)
    assert got["status"] == 413, json.dumps(got)
    assert not got["reset"] and got["send_error"] is None, json.dumps(got)
    world.assert_serves("attacker")
    world.assert_serves("neighbour")


def neigh_lladdr(world, ns: str, ip: str) -> str | None:
    res = world.topo.sh(ns, ["ip", "-j", "neigh", "show", ip, "dev", "eth0"])
    entries = json.loads(res.stdout or "[]")
    return entries[0].get("lladdr") if entries else None


def test_arp_claims_of_the_metadata_address_and_gateway_reach_no_neighbour(world):
    w = world
    neighbour, attacker = w.guests["neighbour"], w.guests["attacker"]
    gateway = GATEWAY["br0"]
    w.assert_serves("neighbour")  # resolves 169.254.169.254 on-link
    w.topo.sh(neighbour.ns, ["ping", "-c1", "-W1", gateway])  # resolves the gateway
    before = {ip: neigh_lladdr(w, neighbour.ns, ip) for ip in ("169.254.169.254", gateway)}
    assert all(before.values()), before
    capture = w.topo.spawn(neighbour.ns, ["tcpdump", "-i", "eth0", "-n", "-e", "-l", "arp"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_capture(capture)
        time.sleep(NEIGH_LOCKTIME_S)
        sent = run_tool(w.topo, attacker.ns, "arpclaim",
                        ["--claim", "169.254.169.254", "--claim", gateway,
                         "--claim", attacker.ip,  # its own: must pass (the capture works)
                         "--target-mac", neighbour.mac, "--target-ip", neighbour.ip],
                        TOOL_TIMEOUT_S)
        assert sent["sent"] > 0
        time.sleep(0.5)
    finally:
        capture.terminate()
        out, _ = capture.communicate(timeout=10)
    claims = [line for line in out.splitlines() if attacker.mac in line.lower()
              and "is-at" in line]
    after = {ip: neigh_lladdr(w, neighbour.ns, ip) for ip in before}
    assert any(f"Reply {attacker.ip} is-at" in line for line in claims), out[-2000:]
    forged = [line for line in claims if f"Reply {attacker.ip} is-at" not in line]
    assert forged == [], forged[:5]
    assert after == before
    assert attacker.mac not in after.values()
    w.assert_serves("neighbour")
    w.assert_serves("bystander")


def wait_for_capture(proc) -> None:
    """tcpdump says "listening on" on stderr once its socket is open."""
    deadline = time.monotonic() + CAPTURE_READY_TIMEOUT_S
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if "listening on" in line:
            return
        if not line and proc.poll() is not None:
            break
    raise RuntimeError("tcpdump did not start")


def test_a_token_ttl_of_4301_digits_gets_400_and_no_traceback(world):
    """int() refuses more than 4,300 digits: the value is checked before conversion."""
    ttl = "X-aws-ec2-metadata-token-ttl-seconds: " + "9" * 4301
    for _ in range(3):
        status, body = world.hv.curl(world.guests["attacker"].ns, "/latest/api/token",
                                     extra=["-X", "PUT", "-H", ttl])
        assert status == 400, body
    world.assert_serves("attacker")
    assert "Traceback" not in world.daemon.log(), world.log_tail()
