"""Log a defence's event once per (event, guest) per interval, in bounded memory.

A flood hits the same defence thousands of times a second; the operator needs to know
which port, MAC and IP did it, not thousands of identical lines. The same holds for an
unexpected error a guest's request runs into: a guest can repeat it at will, so it is
one line per interval too, and its traceback is kept for DEBUG.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

from transparent_md.identity import Guest

# One line per (event, guest) per this many seconds.
DEFAULT_INTERVAL_S = 300.0
# Remembered (event, guest) pairs; the oldest is forgotten first (it may log again
# early, which costs one line).
DEFAULT_MAX_KEYS = 4096
# An error's own text is cut here: it may quote what the guest sent.
MAX_ERROR_TEXT = 200


def describe(guest: Guest | None) -> str:
    """port, MAC and IP of a guest as a log fragment."""
    if guest is None:
        return "an unknown guest"
    return f"port {guest.port} (bridge {guest.bridge}) MAC {guest.mac} IP {guest.ip}"


class RateLimitedLog:
    """`warn(event, guest, message)` logs at most once per (event, guest) per interval."""

    def __init__(self, logger: logging.Logger, interval_s: float = DEFAULT_INTERVAL_S,
                 max_keys: int = DEFAULT_MAX_KEYS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._logger = logger
        self._interval = interval_s
        self._max_keys = max_keys
        self._clock = clock
        self._last: OrderedDict[Hashable, float] = OrderedDict()

    def warn(self, event: str, guest: Guest | None, message: str) -> bool:
        """Log `message` about `guest` unless it was logged recently; True if logged."""
        return self._log(logging.WARNING, event, guest, message)

    def error(self, event: str, guest: Guest | None, message: str,
              exc: BaseException) -> bool:
        """An unexpected error met while serving `guest`: one line with the error's type
        and (cut) text unless logged recently; its traceback only at DEBUG."""
        text = str(exc)
        if len(text) > MAX_ERROR_TEXT:
            text = text[:MAX_ERROR_TEXT] + "..."
        logged = self._log(logging.ERROR, event, guest,
                           f"{message}: {type(exc).__name__}: {text}")
        if logged and self._logger.isEnabledFor(logging.DEBUG):
            self._logger.debug("the error above, in full", exc_info=exc)
        return logged

    def _log(self, level: int, event: str, guest: Guest | None, message: str) -> bool:
        key = (event, guest)
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            return False
        self._last[key] = now
        self._last.move_to_end(key)
        while len(self._last) > self._max_keys:
            self._last.popitem(last=False)
        self._logger.log(level, "%s: %s", describe(guest), message)
        return True

    def __len__(self) -> int:
        return len(self._last)
