"""`identity release --mac MAC --to PORT`: the lock of a VM that moved goes to the port
it moved to, not to a neighbour that copied its MAC and waited in line longer (the hole
tests/hostile/test_redteam_release.py shows for a release without --to)."""

from __future__ import annotations

import time

import pytest

from tests.conftest import write_records
from tests.hostile.test_lock_lifecycle import (
    assert_served,
    identity,
    leaks,
    read_everything,
    secret_record,
)
from tests.hostile.test_redteam_release import RELEASE_DONE_S, wait_in_line
from tests.hostile.world import build_world

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def world(topology, tmp_path_factory):
    w = build_world(topology, tmp_path_factory.mktemp("release-to"))
    vm = w.add_guest("vm", "br0", record=False)
    write_records(w.store, [secret_record("vm", vm)])
    w.start()
    yield w
    w.stop()


def test_identity_release_to_the_new_port_keeps_the_record_from_a_waiting_neighbour(world):
    """The fix: the operator names the port the VM moved to (`--to`); the neighbour that
    waited longer gets nothing, before or after the hand-over."""
    w = world
    vm = w.guests["vm"]
    assert_served(w, "vm")  # the VM holds its MAC's lock on its port
    w.add_guest("thief", "br0", record=False, mac=vm.mac, ip=vm.ip)
    wait_in_line(w, "thief", vm.mac)
    w.add_guest("vm-moved", "br0", record=False, mac=vm.mac, ip=vm.ip)
    wait_in_line(w, "vm-moved", vm.mac)
    released = identity(w, "release", "--mac", vm.mac, "--to", w.guests["vm-moved"].port)
    assert released.returncode == 0, released.stderr
    assert "goes to port" in released.stdout
    deadline = time.monotonic() + RELEASE_DONE_S
    stolen: list = []
    while time.monotonic() < deadline:
        stolen += leaks({"thief": w.curl("thief", timeout=1)}, "vm")
        if w.curl("vm-moved", timeout=1)[0] == 200:
            break
        time.sleep(1.0)
    assert stolen == [], w.log_tail()
    assert w.curl("vm-moved") == (200, "i-0vm")  # the moved VM reads its own record
    assert leaks(read_everything(w, "thief", "vm"), "vm") == []


def test_identity_release_to_a_port_that_is_not_served_is_refused(world):
    w = world
    refused = identity(w, "release", "--mac", w.guests["vm"].mac, "--to", "no-such-port")
    assert refused.returncode != 0 and "is not a port" in refused.stderr
