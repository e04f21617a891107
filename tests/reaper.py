"""A test that times out leaves nothing behind: its processes and namespaces are reaped.

pytest-timeout (signal method) fails a test that overruns by raising in it, so its own
`finally` blocks run; what they cannot reach is a child that was killed before it could
clean up (a demo's daemon and etcd, orphaned), or namespaces a subprocess made. Three
things close that gap:
- the pytest process is a child subreaper, so orphans of its children stay its
  descendants instead of moving to PID 1 where nobody would find them;
- every namespace name made by the run starts with a base unique to the run (exported
  as $TMD_NETNS_PREFIX to children), so the run can tell its namespaces from anyone's;
- when a test's setup or call phase ends in a timeout, the processes that phase started
  get SIGTERM (a demo or daemon cleans up on it), then SIGKILL, and the run's namespaces
  that phase made are removed; at the end of the session whatever is left is reaped too.

Loaded as a plugin by conftest.py (and by the test that proves it, in a pytest of its own).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import secrets
import signal
import time
from collections.abc import Iterator

import pytest

from transparent_md.lab.netns import NETNS_DIR, NETNS_PREFIX_ENV, netns_prefix, remove_namespace

PR_SET_CHILD_SUBREAPER = 36
# Time a SIGTERMed demo or daemon gets to take its own topology down before SIGKILL.
TERM_GRACE_S = 20.0
# pytest-timeout's failure message carries this.
TIMEOUT_MARK = "from pytest-timeout"
# Room left in the namespace prefix's 32 characters for the run's random part.
RUN_TAG_HEX = 2


def start_run() -> str:
    """Become a subreaper and give this run's namespaces a base of their own; returns it."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    base = netns_prefix()[: 32 - 2 * RUN_TAG_HEX] + secrets.token_hex(RUN_TAG_HEX)
    os.environ[NETNS_PREFIX_ENV] = base
    return base


def descendants(root: int | None = None) -> set[int]:
    """PIDs below `root` (this process by default), read from /proc."""
    root = os.getpid() if root is None else root
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: the state follows the last ')'.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def run_namespaces(base: str) -> set[str]:
    """This run's namespaces: their names start with the run's base."""
    if not NETNS_DIR.is_dir():
        return set()
    return {p.name for p in NETNS_DIR.iterdir() if p.name.startswith(base)}


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _signal(pids: set[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _reap_zombies(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)


def reap(pids: set[int], namespaces: set[str]) -> None:
    """SIGTERM `pids`, SIGKILL what is left after the grace, then remove `namespaces`."""
    _signal(pids, signal.SIGTERM)
    deadline = time.monotonic() + TERM_GRACE_S
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    _signal({p for p in pids if _alive(p)}, signal.SIGKILL)
    _reap_zombies(pids)
    for ns in sorted(namespaces, reverse=True):
        remove_namespace(ns)


class Reaper:
    """The pytest plugin: watch each setup and call phase, reap after a timeout."""

    def __init__(self) -> None:
        self.base = start_run()

    def _watch(self) -> Iterator[None]:
        pids, namespaces = descendants(), run_namespaces(self.base)
        outcome = yield
        error = outcome.excinfo[1] if outcome.excinfo else None
        if error is not None and TIMEOUT_MARK in str(error):
            reap(descendants() - pids, run_namespaces(self.base) - namespaces)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Iterator[None]:
        yield from self._watch()

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Iterator[None]:
        yield from self._watch()

    # Last: under pytest-xdist the controller's workers are its descendants too, and
    # they are shut down by xdist's own session finish, which must come first.
    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        reap(descendants(), run_namespaces(self.base))


def pytest_configure(config: pytest.Config) -> None:
    if os.geteuid() == 0 and not config.pluginmanager.has_plugin("tmd-reaper"):
        config.pluginmanager.register(Reaper(), "tmd-reaper")
