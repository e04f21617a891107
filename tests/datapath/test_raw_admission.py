"""The raw datapath's admission keeps the port program's rules, over shared tables: only
a SYN takes a slot, the per-port identity and MAC quotas, the SYN bucket, the MAC lock
(a flagged slot from another port), and slots given back by the same slot releaser the
tc path uses, reused only after the delay. No namespaces, no BPF."""

from __future__ import annotations

import ctypes
import socket

import pytest

from transparent_md.datapath import layout, tables
from transparent_md.datapath.layout import Drop
from transparent_md.datapath.port_limits import PortLimits
from transparent_md.datapath.raw.admission import Admission
from transparent_md.datapath.slot_release import SlotReleaser
from transparent_md.identity.shadow_map import ShadowResolver

SHADOW = "100.64.0.0/10"
GW = bytes.fromhex("0200000000fe")
QUOTA, MAC_QUOTA, BURST = 3, 2, 5


def mac(n: int) -> bytes:
    return bytes([2, 0, 0, 0, 0, n])


def ip(n: int) -> bytes:
    return socket.inet_aton(f"10.0.0.{n}")


@pytest.fixture
def world(tmp_path):
    made = tables.create_raw_tables(tmp_path / "tables")
    cfg = layout.Config(shadow_net=layout.be32("100.64.0.0"),
                        shadow_mask=layout.be32("255.192.0.0"), shadow_slots=100,
                        flags=layout.CFG_MAC_LOCK, port_identity_quota=QUOTA,
                        port_mac_quota=MAC_QUOTA, syn_cost_ns=10**9,
                        syn_burst_ns=BURST * 10**9, slot_reuse_delay_ns=3600 * 10**9)
    made[layout.MAP_CONFIG].update(ctypes.c_uint32(0), cfg)
    limits = PortLimits(made[layout.MAP_PORT_USAGE], made[layout.MAP_PORT_RELEASED],
                        made[layout.MAP_MAC_LOCKS], made[layout.MAP_BY_GUEST])
    for port in (1, 2):
        made[layout.MAP_PORTS].update(ctypes.c_uint32(port),
                                      layout.Port(b"br0", f"p{port}".encode()))
        limits.reset(port)
    yield made, Admission(made), tmp_path / "tables"
    for table in made.values():
        table.close()


def test_only_a_syn_takes_a_slot_and_later_segments_use_it(world):
    _, admission, _ = world
    assert admission.admit(1, ip(5), mac(5), GW, opens=False) == Drop.NOT_SYN
    slot = admission.admit(1, ip(5), mac(5), GW, opens=True)
    assert isinstance(slot, int) and slot > 0
    assert admission.admit(1, ip(5), mac(5), GW, opens=False) == slot


def test_identity_quota_mac_quota_and_syn_bucket(world):
    _, admission, _ = world
    # Two MACs may be locked to port 1; a third MAC is refused by the MAC quota.
    assert isinstance(admission.admit(1, ip(5), mac(5), GW, True), int)
    assert isinstance(admission.admit(1, ip(6), mac(6), GW, True), int)
    assert admission.admit(1, ip(7), mac(7), GW, True) == Drop.MAC_QUOTA
    # Another address of a locked MAC is a third identity; a fourth is over the quota.
    assert isinstance(admission.admit(1, ip(8), mac(5), GW, True), int)
    assert admission.admit(1, ip(9), mac(5), GW, True) == Drop.PORT_QUOTA
    # The bucket: the burst is spent by now, so SYNs are refused for the port...
    refused = [admission.admit(1, ip(5), mac(5), GW, True) for _ in range(BURST)]
    assert Drop.SYN_RATE in refused
    # ... and only for that port.
    assert isinstance(admission.admit(2, ip(20), mac(20), GW, True), int)


def test_a_mac_from_another_port_gets_a_flagged_slot_the_responder_refuses(world):
    _, admission, directory = world
    mine = admission.admit(1, ip(5), mac(5), GW, True)
    copied = admission.admit(2, ip(5), mac(5), GW, True)
    assert isinstance(copied, int) and copied != mine
    resolve = ShadowResolver(directory, SHADOW)
    try:
        owner, forger = resolve(f"100.64.0.{mine}"), resolve(f"100.64.0.{copied}")
        assert owner.port == "p1" and not owner.locked_elsewhere
        assert forger.port == "p2" and forger.locked_elsewhere
    finally:
        resolve.close()


def test_the_slot_releaser_gives_slots_back_and_they_wait_before_reuse(world):
    made, admission, directory = world
    first = admission.admit(1, ip(5), mac(5), GW, True)
    releaser = SlotReleaser(directory, None, SHADOW, grace_s=0.0)
    try:
        assert releaser.run_once() == 1  # no socket here talks to its shadow address
    finally:
        releaser.stop()
    assert not made[layout.MAP_BY_GUEST].keys(layout.GuestKey)
    released = layout.PortReleased()
    assert made[layout.MAP_PORT_RELEASED].lookup(ctypes.c_uint32(1), released)
    assert released.identities_released == 1
    again = admission.admit(1, ip(5), mac(5), GW, True)
    assert isinstance(again, int) and again != first  # the freed slot waits out the delay


def test_a_syn_of_an_identity_with_a_slot_takes_its_free_mac_lock(world):
    made, admission, _ = world
    slot = admission.admit(1, ip(5), mac(5), GW, True)
    locks = made[layout.MAP_MAC_LOCKS]
    key = layout.mac_key(layout.mac_str(mac(5)))
    assert locks.delete(key)  # released: held by nobody
    assert admission.admit(1, ip(5), mac(5), GW, False) == slot
    assert not locks.lookup(key, ctypes.c_uint32())  # only a SYN takes it
    assert admission.admit(1, ip(5), mac(5), GW, True) == slot
    holder = ctypes.c_uint32()
    assert locks.lookup(key, holder) and holder.value == 1
