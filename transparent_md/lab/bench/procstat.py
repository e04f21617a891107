"""Server cost read from /proc: CPU seconds (utime+stime) and resident memory.

CPU time stays steady where requests/s swings with a noisy neighbour, so it is the
figure that compares servers honestly; it is read for a process and its children
(nginx's workers), by PID, before and after a load run.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

# /proc/PID/stat counts in clock ticks; 100 per second on every Linux build we meet.
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Field numbers in /proc/PID/stat counted after the ")" that ends the command name
# (utime is field 14 and stime 15 of the whole line; state, field 3, is index 0 here).
_UTIME_AFTER_COMM = 11
_STIME_AFTER_COMM = 12


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants that are alive now (children of every thread)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
    return out


def cpu_seconds(pids: Iterable[int]) -> float:
    """Sum of utime+stime of these processes (all their threads), in seconds."""
    ticks = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue  # gone: its time is lost, which only under-counts a dying worker
        fields = stat[stat.rindex(")") + 2:].split()
        ticks += int(fields[_UTIME_AFTER_COMM]) + int(fields[_STIME_AFTER_COMM])
    return ticks / CLK_TCK


def memory_kib(pid: int, field: str) -> int:
    """One `Vm*` line of /proc/PID/status (VmRSS now, VmHWM the peak), in KiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def peak_rss_mib(pids: Iterable[int]) -> float:
    """Peak resident memory (VmHWM) summed over processes, in MiB."""
    return sum(memory_kib(p, "VmHWM") for p in pids) / 1024


def rss_mib(pids: Iterable[int]) -> float:
    """Resident memory now (VmRSS) summed over processes, in MiB."""
    return sum(memory_kib(p, "VmRSS") for p in pids) / 1024


class CpuWindow:
    """CPU used by a process tree between `start()` and `stop()`."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._pids: list[int] = []
        self._before = 0.0
        self.seconds = 0.0

    def start(self) -> None:
        self._pids = process_tree(self.pid)
        self._before = cpu_seconds(self._pids)

    def stop(self) -> float:
        # Children born during the window (none expected) would be missed; the PID set
        # is fixed at start so a worker that exits does not make the delta negative.
        self.seconds = cpu_seconds(self._pids) - self._before
        return self.seconds

    def peak_rss_mib(self) -> float:
        return peak_rss_mib(process_tree(self.pid))


def host_cpu_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of every CPU since boot, from the first line of
    /proc/stat (busy: all but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)
