"""Shadow slots come back as soon as no responder socket talks to them.

First SlotReleaser against a responder namespace built here, with real sockets whose
peer is a shadow address and slots written into real pinned maps; then a real daemon:
a guest's served request, and a spoofed SYN that never completes, both give their slot
back within seconds.
"""

from __future__ import annotations

import contextlib
import ctypes
import secrets
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import wait_for, write_records
from tests.pinned_maps import pinned_programs
from transparent_md.datapath import layout
from transparent_md.datapath.port_limits import PortLimits
from transparent_md.datapath.responder_side import entered_netns
from transparent_md.datapath.slot_release import SlotReleaser
from transparent_md.lab.hypervisor import Hypervisor, daemon_names
from transparent_md.names import DaemonNames
from transparent_md.process import stop_process

pytestmark = pytest.mark.netns

SHADOW = "100.64.0.0/10"
MD = "169.254.169.254"
PORT_IFINDEX = 77  # a port that exists only in the maps: nothing is sent in part one
# The daemon does not start a SlotReleaser yet (the lead wires it); until then the
# daemon tests run one here against the daemon's pins. Set True once the daemon does.
DAEMON_RUNS_RELEASER = True
# How long a test waits for a release it expects: SYN-ACK retries (2: gone after about
# 7 s) or TIME_WAIT of the guest's side, plus grace and rounds, with room for a busy host.
RELEASE_WAIT_S = 30.0
METRICS = "127.0.0.1:9464"


# -- part one: SlotReleaser on maps and sockets built here ------------------------------
@pytest.fixture()
def responder(topology):
    """A namespace holding 169.254.169.254 and two shadow addresses on its loopback."""
    ns = topology.add_ns(f"resp{secrets.token_hex(2)}")
    topology.ip(ns, f"addr add {MD}/32 dev lo", "addr add 100.64.0.5/32 dev lo",
                "addr add 100.64.0.6/32 dev lo")
    return ns


@pytest.fixture()
def pinned():
    with pinned_programs(layout.Config(shadow_slots=100,
                                       slot_reuse_delay_ns=15 * 10**9)) as (_, maps, pin_dir):
        PortLimits(maps[layout.MAP_PORT_USAGE], maps[layout.MAP_PORT_RELEASED],
                   maps[layout.MAP_MAC_LOCKS], maps[layout.MAP_BY_GUEST]).reset(PORT_IFINDEX)
        yield maps, pin_dir


def take_slot(maps, index: int, last_seen_ago_s: float) -> layout.GuestKey:
    """Write what the port program writes for a new identity."""
    key = layout.GuestKey(ifindex=PORT_IFINDEX, ip=layout.be32(f"10.0.0.{index}"))
    key.mac[:] = layout.mac_bytes(f"02:00:00:00:00:{index:02x}")
    slot = layout.Slot(ifindex=key.ifindex, ip=key.ip, free_since_ns=layout.SLOT_TAKEN,
                       last_seen_ns=time.monotonic_ns() - int(last_seen_ago_s * 1e9))
    slot.mac[:] = bytes(key.mac)
    maps[layout.MAP_SLOTS].update(ctypes.c_uint32(index), slot)
    maps[layout.MAP_BY_GUEST].update(key, ctypes.c_uint32(index))
    usage = layout.PortUsage()
    maps[layout.MAP_PORT_USAGE].lookup(ctypes.c_uint32(PORT_IFINDEX), usage)
    usage.identities_taken += 1
    maps[layout.MAP_PORT_USAGE].update(ctypes.c_uint32(PORT_IFINDEX), usage)
    return key


def slot_of(maps, index: int) -> layout.Slot:
    slot = layout.Slot()
    assert maps[layout.MAP_SLOTS].lookup(ctypes.c_uint32(index), slot)
    return slot


def released_count(maps) -> int:
    entry = layout.PortReleased()
    maps[layout.MAP_PORT_RELEASED].lookup(ctypes.c_uint32(PORT_IFINDEX), entry)
    return entry.identities_released


def connect_from(ns: str, shadow: str) -> tuple[socket.socket, socket.socket, socket.socket]:
    """(listener, accepted, client): a connection whose server side's peer is `shadow`."""
    with entered_netns(ns):
        listener = socket.create_server((MD, 80))
        client = socket.socket()
        client.bind((shadow, 0))
        client.connect((MD, 80))
    accepted, _ = listener.accept()
    return listener, accepted, client


def test_idle_slot_without_socket_is_released_and_counted(pinned, responder):
    maps, pin_dir = pinned
    key = take_slot(maps, 5, last_seen_ago_s=10)
    releaser = SlotReleaser(pin_dir, responder, SHADOW)
    try:
        before = time.monotonic_ns()
        assert releaser.run_once() == 1
    finally:
        releaser.stop()
    slot = slot_of(maps, 5)
    assert slot.ifindex == 0 and slot.free_since_ns >= before
    assert not maps[layout.MAP_BY_GUEST].lookup(key, ctypes.c_uint32())
    assert released_count(maps) == 1


def test_slot_seen_within_the_grace_is_kept(pinned, responder):
    maps, pin_dir = pinned
    take_slot(maps, 5, last_seen_ago_s=0)
    releaser = SlotReleaser(pin_dir, responder, SHADOW, grace_s=60)
    try:
        assert releaser.run_once() == 0
    finally:
        releaser.stop()
    assert slot_of(maps, 5).ifindex == PORT_IFINDEX


def test_open_connection_and_time_wait_hold_the_slot(pinned, responder):
    maps, pin_dir = pinned
    take_slot(maps, 5, last_seen_ago_s=10)
    take_slot(maps, 6, last_seen_ago_s=10)
    listener, accepted, client = connect_from(responder, "100.64.0.5")
    releaser = SlotReleaser(pin_dir, responder, SHADOW)
    try:
        # Slot 6 has no socket: released. Slot 5 has an open connection: kept.
        assert releaser.run_once() == 1
        assert slot_of(maps, 5).ifindex == PORT_IFINDEX and slot_of(maps, 6).ifindex == 0
        # The responder closes first: its side waits in TIME_WAIT, still peer 100.64.0.5.
        accepted.close()
        client.recv(1)
        client.close()
        assert releaser.run_once() == 0
        assert slot_of(maps, 5).ifindex == PORT_IFINDEX
    finally:
        releaser.stop()
        listener.close()


def test_client_closing_first_frees_the_slot_at_once(pinned, responder):
    maps, pin_dir = pinned
    take_slot(maps, 5, last_seen_ago_s=10)
    listener, accepted, client = connect_from(responder, "100.64.0.5")
    releaser = SlotReleaser(pin_dir, responder, SHADOW)
    try:
        assert releaser.run_once() == 0
        client.close()  # the guest's side takes TIME_WAIT; the responder's goes away
        accepted.recv(1)
        accepted.close()
        deadline = time.monotonic() + 5
        while releaser.run_once() == 0 and time.monotonic() < deadline:
            time.sleep(0.1)  # LAST_ACK lasts until the peer's final ACK arrives
        assert slot_of(maps, 5).ifindex == 0
    finally:
        releaser.stop()
        listener.close()


def test_thread_releases_in_the_background(pinned, responder):
    maps, pin_dir = pinned
    take_slot(maps, 5, last_seen_ago_s=10)
    releaser = SlotReleaser(pin_dir, responder, SHADOW, interval_s=0.05)
    releaser.start()
    try:
        deadline = time.monotonic() + 5
        while slot_of(maps, 5).ifindex and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        releaser.stop()
    assert slot_of(maps, 5).ifindex == 0 and releaser.released_total == 1


# -- part two: a real daemon ------------------------------------------------------------
@pytest.fixture(scope="module")
def hv(topology, tmp_path_factory):
    hv = Hypervisor(topology)
    hv.bridge("br0")
    guest = hv.guest("g0", bridge="br0", port="p0", addr="10.0.0.10/24",
                     routes=[f"{MD}/32 dev eth0"])
    hv.store = str(tmp_path_factory.mktemp("store") / "instances.db")
    write_records(hv.store, [{"instance_id": "i-0", "mac": guest.mac}])
    return hv


def slots_in_use(hv: Hypervisor) -> int:
    """The daemon's gauge, scraped from its --metrics endpoint."""
    scraped = hv.topo.sh(hv.ns, ["curl", "-sS", "-m", "5", f"http://{METRICS}/metrics"])
    for line in scraped.stdout.splitlines():
        if line.startswith("transparent_md_shadow_slots_in_use "):
            return int(float(line.split()[1]))
    raise AssertionError(f"no slots gauge in:\n{scraped.stdout}{scraped.stderr}")


@contextlib.contextmanager
def releasing(daemon, names: DaemonNames):
    """A SlotReleaser beside the daemon, in its mount namespace: `ip netns exec` gave
    the daemon a /sys of its own, so its pins are visible only there."""
    if DAEMON_RUNS_RELEASER:
        yield
        return
    script = ("import time; from transparent_md.datapath.slot_release import SlotReleaser; "
              f"SlotReleaser({str(names.pin_dir)!r}, {names.responder_netns!r}, {SHADOW!r})"
              ".start(); time.sleep(600)")
    proc = subprocess.Popen(["nsenter", "-t", str(daemon.proc.pid), "-m", "-n",
                             sys.executable, "-c", script])
    try:
        yield
    finally:
        stop_process(proc)


def spoofed_syn(hv: Hypervisor, src: str) -> None:
    """A SYN from the guest's port with a source nobody there owns: its SYN-ACK is lost."""
    guest = hv.guests["g0"]
    hv.topo.sh(guest.ns, [sys.executable, "-c", (
        "from scapy.all import Ether, IP, TCP, sendp; "
        f"sendp(Ether(src='{guest.mac}', dst='02:00:00:00:ee:ee') / "
        f"IP(src='{src}', dst='{MD}') / TCP(sport=5555, dport=80, flags='S'), "
        "iface='eth0', verbose=False)")], check=True)


def test_served_guest_and_spoofed_syn_give_their_slots_back(hv):
    daemon = hv.start_daemon(["br0"], hv.store, ["--metrics", METRICS])
    try:
        with releasing(daemon, daemon_names(hv.ns)):
            assert hv.curl(hv.guests["g0"].ns, "/latest/meta-data/instance-id") == (200, "i-0")
            spoofed_syn(hv, "10.0.0.99")
            assert slots_in_use(hv) >= 1
            # curl closed first: the responder's socket is gone at once; the spoofed
            # SYN's request sock after two SYN-ACK retries.
            assert wait_for(lambda: slots_in_use(hv) == 0, RELEASE_WAIT_S)
            # Served again, from a new slot.
            assert hv.curl(hv.guests["g0"].ns, "/latest/meta-data/instance-id") == (200, "i-0")
            assert slots_in_use(hv) == 1
    finally:
        assert daemon.stop() == 0


def test_responder_namespace_gives_up_synacks_after_two_retries(hv):
    setting = ["cat", "/proc/sys/net/ipv4/tcp_synack_retries"]
    host_before = hv.topo.sh(hv.ns, setting).stdout
    daemon = hv.start_daemon(["br0"], hv.store)
    try:
        retries = subprocess.run(
            daemon.in_responder_netns(daemon_names(hv.ns).responder_netns, setting),
            capture_output=True, text=True)
    finally:
        daemon.stop()
    assert retries.stdout.strip() == "2", retries.stderr
    # The hypervisor's own namespace keeps its setting.
    assert hv.topo.sh(hv.ns, setting).stdout == host_before
