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
