"""The order the suite's modules start in, for parallel workers (pytest-xdist).

`scripts/test` runs `--dist loadfile --no-loadscope-reorder`: a module is one unit of
work, so its module-scoped world (namespaces, daemons, VMs) is built once, on one
worker. Units are handed out in collection order (xdist's default would reorder them by
their number of tests, which puts the VM and soak modules, with few tests each, last),
one at a time to whichever worker is free; so the long ones (VM boots, then slow soaks)
go first, and the run does not end with one worker alone on a long module while the
other idles. Without xdist only the order changes.
"""

from __future__ import annotations

import pytest

# Earlier rank, earlier start: modules holding any test with these marks.
RANK_BY_MARK = ("vm", "slow")


def _rank(module_items: list[pytest.Item]) -> int:
    for rank, mark in enumerate(RANK_BY_MARK):
        if any(item.get_closest_marker(mark) is not None for item in module_items):
            return rank
    return len(RANK_BY_MARK)


def longest_first(items: list[pytest.Item]) -> None:
    """Put modules with long tests first, keeping each module's tests together and in
    their own order."""
    modules: dict[str, list[pytest.Item]] = {}
    for item in items:
        modules.setdefault(item.nodeid.split("::", 1)[0], []).append(item)
    ordered = sorted(modules.values(), key=_rank)
    items[:] = [item for module_items in ordered for item in module_items]
