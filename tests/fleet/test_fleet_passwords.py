"""Guest-posted OpenStack passwords with the etcd fleet store: created once in etcd
(PREFIX/passwords/<id>), read from every daemon's cache, cleared through etcd; with etcd
down a post is answered 503 at once and the last known password is still served.

One etcd and two hypervisors; the record is bound by MAC and a guest with that MAC sits
on each hypervisor (the VM before and after a live migration). The tests run in order.
"""

from __future__ import annotations

import time

import pytest

from tests.fleet.fleet_world import GUEST_ROUTES, Fleet

pytestmark = pytest.mark.netns

PASSWORD_PATH = "/openstack/latest/password"
# The promise for every change through etcd: on every daemon within 1 s.
PROPAGATION_BOUND_S = 1.0
# etcd refuses connections once stopped: the 503 must not wait out a request timeout.
REFUSAL_BOUND_S = 1.5
INSTANCE = "i-pw"


@pytest.fixture(scope="module")
def fleet(topology, tmp_path_factory):
    fleet = Fleet(topology, tmp_path_factory.mktemp("fleet-pw"))
    try:
        hv1_guest = fleet.hvs[0].guests["g1"]
        # The same VM after a live migration: hv2 has a port with its MAC.
        fleet.hvs[1].guest("moved", bridge="br0", port="p1", addr="10.0.0.20/24",
                           routes=GUEST_ROUTES, mac=hv1_guest.mac)
        fleet.add(INSTANCE, "--mac", hv1_guest.mac)
        fleet.add("i-other", "--mac", fleet.hvs[1].guests["g2"].mac)
        fleet.start_daemon(0)
        fleet.start_daemon(1)
        yield fleet
    finally:
        fleet.stop()


def post(fleet: Fleet, hv: int, guest: str, password: str) -> tuple[int, str]:
    h = fleet.hvs[hv]
    return h.curl(h.guests[guest].ns, PASSWORD_PATH,
                  extra=["-X", "POST", "--data-binary", password])


def get(fleet: Fleet, hv: int, guest: str) -> tuple[int, str]:
    h = fleet.hvs[hv]
    return h.curl(h.guests[guest].ns, PASSWORD_PATH)


def seconds_until(expected: tuple[int, str], ask, timeout: float = 5.0) -> float:
    """Seconds until `ask()` answers `expected` (fails after `timeout`)."""
    started = time.monotonic()
    while True:
        answer = ask()
        if answer == expected:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"still {answer!r}, not {expected!r}, after {timeout} s")
        time.sleep(0.02)


def test_post_on_hv1_is_in_etcd_and_read_on_both_hypervisors(fleet):
    assert get(fleet, 0, "g1") == (200, "")
    assert post(fleet, 0, "g1", "s3cret-one") == (200, "")
    assert get(fleet, 0, "g1") == (200, "s3cret-one")  # at once where it was posted
    assert fleet.etcd.etcdctl("get", "--print-value-only",
                              f"/fleet/passwords/{INSTANCE}").strip() == "s3cret-one"
    took = seconds_until((200, "s3cret-one"), lambda: get(fleet, 1, "moved"))
    assert took < PROPAGATION_BOUND_S, took


def test_second_post_refused_fleet_wide(fleet):
    assert post(fleet, 1, "moved", "another")[0] == 409
    assert post(fleet, 0, "g1", "another")[0] == 409
    assert get(fleet, 1, "moved") == (200, "s3cret-one")


def test_clear_through_etcd_reaches_both_daemons_within_a_second(fleet):
    res = fleet.cli("instance", "update", INSTANCE, "--clear-password")
    assert res.returncode == 0, res.stderr
    started = time.monotonic()
    seconds_until((200, ""), lambda: get(fleet, 0, "g1"))
    seconds_until((200, ""), lambda: get(fleet, 1, "moved"))
    took = time.monotonic() - started
    assert took < PROPAGATION_BOUND_S, took
    # Cleared, so the guest (now on hv2) may post again, and hv1 learns the new one.
    assert post(fleet, 1, "moved", "s3cret-two") == (200, "")
    seconds_until((200, "s3cret-two"), lambda: get(fleet, 0, "g1"))


def test_etcd_down_post_answers_503_get_serves_the_last_known(fleet):
    fleet.etcd.stop()
    started = time.monotonic()
    code, _ = post(fleet, 1, "g2", "during-outage")
    took = time.monotonic() - started
    assert code == 503
    assert took < REFUSAL_BOUND_S, took
    assert post(fleet, 1, "g2", "during-outage")[0] == 503  # refused without trying
    assert get(fleet, 0, "g1") == (200, "s3cret-two")
    assert get(fleet, 1, "moved") == (200, "s3cret-two")
    assert get(fleet, 1, "g2") == (200, "")
    # etcd back: once the back-off is over the post lands.
    fleet.etcd.start()
    seconds_until((200, ""), lambda: post(fleet, 1, "g2", "after-outage"), timeout=15.0)
    seconds_until((200, "after-outage"), lambda: get(fleet, 1, "g2"))


def test_removing_a_record_removes_its_password(fleet):
    res = fleet.cli("instance", "remove", "i-other")
    assert res.returncode == 0, res.stderr
    assert fleet.etcd.etcdctl("get", "/fleet/passwords/i-other") == ""
