"""LockWait's promise, on a fake clock: one read waits at most MAX_WAIT_S, and after a
wait in vain no read waits at all for PATIENCE_LOST_S."""

from __future__ import annotations

from transparent_md.store.lock_wait import MAX_WAIT_S, PATIENCE_LOST_S, POLL_S, LockWait


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def waited_until_refused(wait: LockWait) -> int:
    wait.start()
    pauses = 0
    while wait.pause():
        pauses += 1
    return pauses


def test_a_held_lock_costs_one_bounded_wait_then_none_until_patience_returns():
    time = FakeTime()
    wait = LockWait(time.clock, time.sleep)
    started = time.now
    pauses = waited_until_refused(wait)
    assert int(MAX_WAIT_S / POLL_S) - 1 <= pauses <= int(MAX_WAIT_S / POLL_S)
    assert time.now - started <= MAX_WAIT_S
    # Every read in the next PATIENCE_LOST_S gives up at once.
    for _ in range(1000):
        assert waited_until_refused(wait) == 0
    assert time.now - started <= MAX_WAIT_S
    time.now += PATIENCE_LOST_S
    assert waited_until_refused(wait) == pauses  # patient again


def test_a_lock_released_during_the_wait_costs_only_the_wait():
    time = FakeTime()
    wait = LockWait(time.clock, time.sleep)
    wait.start()
    assert wait.pause() and wait.pause()
    assert abs(wait.waited - 2 * POLL_S) < 1e-9
    wait.start()  # the next read starts its own wait
    assert wait.waited == 0 and wait.pause()
