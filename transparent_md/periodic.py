"""A round of work every few seconds on a background thread, for the daemon's helpers.

The filter guard, the slot releaser and the status writer each run a round, sleep, and
go again until stopped; a round that fails is logged and the next one runs anyway, so a
passing fault (a port vanishing mid-check) never stops the helper for good.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from transparent_md.process import start_thread

# How long stop() waits for a round in progress before giving up on the thread.
STOP_TIMEOUT_S = 5.0


class Periodic:
    """Runs `action(resource)` every `interval_s` on a daemon thread until `stop()`.

    `resource` is what `opens()` yields, opened and closed on the thread itself (e.g. a
    netlink socket, which must not be shared with other threads); None without it.
    """

    def __init__(self, name: str, interval_s: float, action: Callable[[Any], object], *,
                 opens: Callable[[], AbstractContextManager] | None = None,
                 first_round_at_once: bool = False,
                 logger: logging.Logger | None = None) -> None:
        self.name = name
        self.interval_s = interval_s
        self._action = action
        self._opens = opens or contextlib.nullcontext
        self._at_once = first_round_at_once
        self._log = logger or logging.getLogger(__name__)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = start_thread(self.name, self._run)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=STOP_TIMEOUT_S)
            self._thread = None

    def _run(self) -> None:
        with self._opens() as resource:
            if self._at_once:
                self._round(resource)
            while not self._stop.wait(self.interval_s):
                self._round(resource)

    def _round(self, resource: Any) -> None:
        try:
            self._action(resource)
        except Exception:
            self._log.exception("%s: a round failed; the next one runs as usual", self.name)
