"""The MAC lock file: written atomically, read back whole, ignored (logged) when bad."""

from __future__ import annotations

import logging

from transparent_md.datapath import lock_file
from transparent_md.datapath.lock_file import LockState, PortLink, SavedLock, SavedWaiter


def test_round_trip(tmp_path):
    path = tmp_path / "state" / "mac-locks.json"
    state = LockState(
        locks=(SavedLock("02:00:00:00:00:01", PortLink(7, "vnet3")),),
        waiting=(SavedWaiter("02:00:00:00:00:01", PortLink(9, "vnet5"), "10.0.0.5",
                             1_700_000_000.5, 1_700_000_030.25),))
    lock_file.save(path, state)
    assert lock_file.load(path) == state
    assert not path.with_suffix(".tmp").exists()


def test_missing_file_is_no_locks(tmp_path):
    assert lock_file.load(tmp_path / "none.json") == LockState()


def test_bad_file_is_logged_and_ignored(tmp_path, caplog):
    path = tmp_path / "mac-locks.json"
    for body in ("{", "[]", '{"version": 99}', '{"version": 1, "locks": [{"mac": 1}]}'):
        path.write_text(body)
        with caplog.at_level(logging.WARNING):
            assert lock_file.load(path) == LockState()
        assert "cannot be read" in caplog.text
        caplog.clear()


def test_bad_entries_are_dropped_and_the_good_kept(tmp_path, caplog):
    """Entries no daemon writes (corrupted or hand-edited) would fail the restore and keep
    the daemon down; tests/hostile/test_redteam_lockfile.py shows it on a real daemon."""
    path = tmp_path / "mac-locks.json"
    good = SavedLock("02:00:00:00:00:01", PortLink(7, "vnet3"))
    waiter = SavedWaiter("02:00:00:00:00:01", PortLink(9, "vnet5"), "10.0.0.5",
                         1_700_000_000.5, 1_700_000_030.25)
    bad_locks = tuple(SavedLock(mac, PortLink(7, "vnet3")) for mac in (
        "zz:00:00:00:00:01", "02:00:00:00:00", "02:00:00:00:00:100", "02-00-00-00-00-01"))
    bad_waiters = (SavedWaiter(waiter.mac, waiter.port, waiter.ip, -1e308, -1e308),
                   SavedWaiter(waiter.mac, PortLink(-1, "vnet5"), waiter.ip, 1.0, 2.0))
    lock_file.save(path, LockState((good, *bad_locks), (waiter, *bad_waiters)))
    with caplog.at_level(logging.WARNING):
        assert lock_file.load(path) == LockState((good,), (waiter,))
    assert "6 entries with a bad MAC, port or time ignored" in caplog.text
