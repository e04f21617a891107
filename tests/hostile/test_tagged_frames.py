"""Issue 20, acceptance 3: tagged and ar_hrd=6 frames from a guest, on real ports.

On a real port the kernel moves a frame's outer VLAN tag out of the packet before the
port program runs (skb->vlan_tci), which BPF_PROG_TEST_RUN never does: these tests
send from the attacker's namespace and look at the victim's.

- ARP claims of 169.254.169.254 and of the segment's gateway, inside a priority tag
  (VID 0, which the victim's Linux takes as untagged), a VLAN tag, two tags, or with
  ar_hrd=6 (IEEE 802, which Linux accepts on Ethernet): the victim's neighbour entries
  for both stay as they were, and its capture shows none of the claims. The attacker's
  claim of its own address, sent the same way alongside, does arrive: the capture and
  the wrapping work.
- Tagged SYNs to 169.254.169.254:80 reach no other guest (they used to be flooded to
  all of them); the same tagged SYNs broadcast to another address do arrive.
"""

from __future__ import annotations

import json

import dpkt
import pytest

from tests.capture import Capture
from tests.hostile.world import GATEWAY, build_world, metric_value
from transparent_md.lab.attacks.launch import run_tool

pytestmark = pytest.mark.netns

MD = "169.254.169.254"
TOOL_TIMEOUT_S = 30
# Linux ignores a neighbour entry override within 1 s of its last update (locktime):
# the claims go on for longer (arpclaim's default count and interval), so one that
# got through would show in the table.
CLAIM_COUNT = 15
# Each claim goes out twice: broadcast, and unicast to the victim.
FRAMES_PER_CLAIM = 2
SYN_COUNT = 10
CONTROL_FIRST_PORT = 42000
# An address nobody holds: SYNs to it, broadcast, are flooded to every guest.
NOBODY = "10.0.0.250"
BROADCAST = "ff:ff:ff:ff:ff:ff"

# How the attacker wraps its frames: arguments for arpclaim / tagsyn.
CLAIM_FORMS = {
    "priority-vid0": ["--vlan", "0"],
    "vid5": ["--vlan", "5"],
    "qinq-8021ad": ["--vlan", "88a8:5", "--vlan", "7"],
    "qinq-vid0-vid0": ["--vlan", "0", "--vlan", "0"],
    "ieee802": ["--hardware", "6"],
    "ieee802-vid0": ["--hardware", "6", "--vlan", "0"],
}
SYN_FORMS = {name: args for name, args in CLAIM_FORMS.items() if "--hardware" not in args}


def drops(world, reason: str) -> float:
    status, body = world.metrics()
    assert status == 200, body
    return metric_value(body, f'transparent_md_datapath_drops_total{{reason="{reason}"}}')


@pytest.fixture(scope="module")
def world(topology, tmp_path_factory):
    w = build_world(topology, tmp_path_factory.mktemp("tagged"))
    w.add_guest("attacker", "br0")
    # The victim reaches the metadata address on-link and everything else through the
    # segment's gateway (answered by the daemon's --gateway rule): both are worth
    # stealing.
    w.add_guest("victim", "br0", routes=[f"{MD}/32 dev eth0", f"default via {GATEWAY['br0']}"])
    w.add_guest("bystander", "br1")
    w.start()
    yield w
    w.stop()


def neigh_lladdr(world, ns: str, ip: str) -> str | None:
    res = world.topo.sh(ns, ["ip", "-j", "neigh", "show", ip, "dev", "eth0"])
    entries = json.loads(res.stdout or "[]")
    return entries[0].get("lladdr") if entries else None


def arp_frames(frames: list[bytes], sender_mac: str) -> list[dpkt.arp.ARP]:
    """ARP packets in `frames` from `sender_mac`, however tagged (dpkt walks the tags)."""
    mac = bytes.fromhex(sender_mac.replace(":", ""))
    found = []
    for raw in frames:
        eth = dpkt.ethernet.Ethernet(raw)
        if eth.src == mac and isinstance(eth.data, dpkt.arp.ARP):
            found.append(eth.data)
    return found


def tcp_to(frames: list[bytes], dst_ip: str) -> list[int]:
    """Source ports of the TCP segments to `dst_ip` in `frames`, however tagged."""
    dst = dpkt.utils.inet_to_str
    return [eth.data.data.sport for eth in map(dpkt.ethernet.Ethernet, frames)
            if isinstance(eth.data, dpkt.ip.IP) and dst(eth.data.dst) == dst_ip
            and isinstance(eth.data.data, dpkt.tcp.TCP)]


@pytest.mark.parametrize("form", sorted(CLAIM_FORMS))
def test_arp_claims_leave_the_victims_neighbour_table_unchanged(world, tmp_path, form):
    w = world
    victim, attacker = w.guests["victim"], w.guests["attacker"]
    gateway = GATEWAY["br0"]
    w.assert_serves("victim")  # resolves 169.254.169.254 on-link
    w.topo.sh(victim.ns, ["ping", "-c1", "-W1", gateway])  # resolves the gateway
    before = {ip: neigh_lladdr(w, victim.ns, ip) for ip in (MD, gateway)}
    assert all(before.values()) and attacker.mac not in before.values(), before
    reason = "tagged_arp_claim" if "--vlan" in CLAIM_FORMS[form] else "arp_claim"
    dropped_before = drops(w, reason)

    capture = Capture(w.hv, victim.ns, str(tmp_path / "victim.pcap"))
    try:
        sent = run_tool(w.topo, attacker.ns, "arpclaim",
                        ["--claim", MD, "--claim", gateway,
                         "--claim", attacker.ip,  # its own: must arrive
                         "--target-mac", victim.mac, "--target-ip", victim.ip,
                         "--count", str(CLAIM_COUNT), *CLAIM_FORMS[form]],
                        TOOL_TIMEOUT_S)
        own_claims = CLAIM_COUNT * FRAMES_PER_CLAIM
        # The own claims go out last in every round: once all are seen, so would be
        # any forged one that got through.
        seen = arp_frames(capture.frames(until=lambda frames: len(
            [a for a in arp_frames(frames, attacker.mac)
             if dpkt.utils.inet_to_str(a.spa) == attacker.ip]) >= own_claims), attacker.mac)
    finally:
        capture.stop()
    claimed = [dpkt.utils.inet_to_str(a.spa) for a in seen]
    assert sent["sent"] == 3 * own_claims
    assert claimed.count(attacker.ip) == own_claims, claimed
    assert [ip for ip in claimed if ip != attacker.ip] == []
    assert {ip: neigh_lladdr(w, victim.ns, ip) for ip in before} == before
    assert drops(w, reason) - dropped_before == 2 * own_claims
    w.assert_serves("victim")
    w.assert_serves("bystander")


@pytest.mark.parametrize("form", sorted(SYN_FORMS))
def test_tagged_syns_to_the_metadata_address_reach_no_other_guest(world, tmp_path, form):
    w = world
    victim, attacker = w.guests["victim"], w.guests["attacker"]
    dropped_before = drops(w, "tagged_metadata")
    capture = Capture(w.hv, victim.ns, str(tmp_path / "victim.pcap"))
    try:
        attack = run_tool(w.topo, attacker.ns, "tagsyn",
                          ["--count", str(SYN_COUNT), *SYN_FORMS[form]], TOOL_TIMEOUT_S)
        # The same frames broadcast to an address nobody holds are flooded: the
        # victim's capture sees them, tags and all.
        control = run_tool(w.topo, attacker.ns, "tagsyn",
                           ["--count", str(SYN_COUNT), "--dst-ip", NOBODY, "--dst-mac",
                            BROADCAST, "--first-port", str(CONTROL_FIRST_PORT),
                            *SYN_FORMS[form]], TOOL_TIMEOUT_S)
        frames = capture.frames(
            until=lambda frames: len(tcp_to(frames, NOBODY)) >= SYN_COUNT)
    finally:
        capture.stop()
    assert sorted(tcp_to(frames, NOBODY)) == control["ports"]
    assert tcp_to(frames, MD) == [], f"flooded to the victim: {attack}"
    assert drops(w, "tagged_metadata") - dropped_before == SYN_COUNT
    w.assert_serves("victim")
    w.assert_serves("attacker")  # untagged, it is still served
