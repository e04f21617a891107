"""Shared fixtures: root check, a store file per test module, throw-away topologies."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from transparent_md.lab.netns import Topology
from transparent_md.store import open_store, parse_record

# Someone else's tc filter, placed on a port before the daemon starts; it matches no
# real frame (destination MAC de:ad:be:ef:..), so ours still sees every packet.
FOREIGN_FILTER = ["prio", "1", "u32", "match", "u32", "0xdeadbeef", "0xffffffff", "at", "0",
                  "flowid", "1:1"]


def pytest_configure(config: pytest.Config) -> None:
    if os.geteuid() != 0:
        raise pytest.UsageError("the suite needs root: it loads BPF programs and builds netns")


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
