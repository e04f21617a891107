"""Shared fixtures: the root gate per test, a store file per test module, throw-away topologies.

Tests that load BPF programs or build namespaces carry `pytest.mark.netns`; as a normal
user they are skipped with a reason, so the rest of the suite (store, protocol, DHCP
formats, import rules) runs anywhere: `pytest -m "not netns"`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

import pytest
from hypothesis import settings as hypothesis_settings

from tests import reaper, scheduling
from tests.installed import installed_package, installed_prefix  # noqa: F401 - session fixtures
from transparent_md.lab.netns import Topology
from transparent_md.store import open_store, parse_record

# Someone else's tc filter, placed on a port before the daemon starts; it matches no
# real frame (destination MAC de:ad:be:ef:..), so ours still sees every packet.
FOREIGN_FILTER = ["prio", "1", "u32", "match", "u32", "0xdeadbeef", "0xffffffff", "at", "0",
                  "flowid", "1:1"]

NEEDS_ROOT = ("needs root (loads BPF programs, builds network namespaces): run as root, "
              "or leave it out with -m 'not netns'")
# Hypothesis keeps failing examples in ./.hypothesis by default; a read-only checkout
# (another user's, or a CI cache) must not turn that into errors.
HYPOTHESIS_STORAGE_ENV = "HYPOTHESIS_STORAGE_DIRECTORY"
HYPOTHESIS_DEFAULT_STORAGE = ".hypothesis"
READ_ONLY_PROFILE = "no-example-database"


def _can_write(path: str) -> bool:
    """Whether `path` exists and is writable, or could be created."""
    if os.path.exists(path):
        return os.access(path, os.W_OK)
    return os.access(os.path.dirname(os.path.abspath(path)), os.W_OK)


def pytest_configure(config: pytest.Config) -> None:
    reaper.pytest_configure(config)
    storage = os.environ.get(HYPOTHESIS_STORAGE_ENV, HYPOTHESIS_DEFAULT_STORAGE)
    if not _can_write(storage):
        hypothesis_settings.register_profile(READ_ONLY_PROFILE, database=None)
        hypothesis_settings.load_profile(READ_ONLY_PROFILE)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    scheduling.longest_first(items)
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason=NEEDS_ROOT)
    for item in items:
        if item.get_closest_marker("netns") is not None:
            item.add_marker(skip)


# The datapaths the guest-facing suites run on (`run --datapath`).
DATAPATHS = ("tc", "raw")


@pytest.fixture(scope="module", params=DATAPATHS)
def datapath(request) -> str:
    """Module-wide: a module's world is built once per datapath, its tests run on each."""
    return request.param


@pytest.fixture(scope="module")
def datapath_topology(datapath) -> Iterator[Topology]:
    """Namespaces for one datapath's world (a module's second world must not meet the
    first one's namespaces, which live until the module ends)."""
    with Topology() as topo:
        yield topo


@pytest.fixture(scope="module")
def topology() -> Iterator[Topology]:
    """Namespaces with a per-run prefix, removed after the module even on failure."""
    with Topology() as topo:
        yield topo


def write_records(path: str, records: list[dict]) -> None:
    store = open_store(path)
    try:
        store.put_many([parse_record(r) for r in records])
    finally:
        store.close()


class Clock:
    """A clock the test moves by hand (`clock.now += 61`), for token and backoff timing."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def wait_for(predicate: Callable[[], object], timeout: float, poll: float = 0.05) -> bool:
    """Whether `predicate()` came true within `timeout` s: a deadline, never a guessed sleep."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll)
    return bool(predicate())
