"""System calls a server makes per request, counted with `strace -c` over a known load.

strace attaches to the serving thread of every process of the server (the event
loop's thread; the daemon's helper threads do per-second work, not per-request work),
the same wrk clients as the load rows then make a fixed number of requests (each wrk
stops after its share of answers), and strace's summary, divided by the requests wrk
counted, gives the calls per request; in `Connection: close` mode a request is a
connection, so that is also the cost of a connection. Calls an event loop makes once
per pass (epoll_pwait, the io_uring_enter that submits libuv's batched epoll_ctl
ADDs) are shared by the connections served in that pass, for every server alike.
"""

from __future__ import annotations

import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from transparent_md.lab.bench import wrk
from transparent_md.lab.bench.measure import NEW_CONNECTION, Target
from transparent_md.lab.bench.procstat import process_tree

# Requests per traced run: enough that the loop's own timers and the sweeper vanish
# in the average, few enough to take about a second under strace.
DEFAULT_REQUESTS = 2000
# strace needs a moment after its "attached" lines before every thread is traced.
ATTACH_SETTLE_S = 0.3
ATTACH_TIMEOUT_S = 10.0
# A counted wrk run ends by itself; this only bounds a server that stopped answering.
WRK_MAX_S = 60.0
# strace -c summary lines: "% time seconds usecs/call calls [errors] syscall".
_SUMMARY_MIN_FIELDS = 5


@dataclass(frozen=True)
class SyscallCount:
    """One traced run: calls per request in total and per system call."""

    target: str
    label: str
    mode: str
    requests: int
    per_request: dict[str, float]

    @property
    def total(self) -> float:
        return sum(self.per_request.values())

    def to_json(self) -> dict:
        return {"server": self.target, "label": self.label, "mode": self.mode,
                "requests": self.requests, "per_request": round(self.total, 2),
                "per_connection": (round(self.total, 2) if self.mode == NEW_CONNECTION
                                   else None),
                "by_call": {k: round(v, 3) for k, v in sorted(
                    self.per_request.items(), key=lambda kv: -kv[1])}}


def parse_summary(text: str) -> dict[str, int]:
    """strace -c's table as {syscall: calls} (the total line left out)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < _SUMMARY_MIN_FIELDS or not fields[3].isdigit():
            continue
        name = fields[-1]
        if name != "total":
            out[name] = out.get(name, 0) + int(fields[3])
    return out


def count(target: Target, mode: str, requests: int, workdir: Path) -> SyscallCount:
    """Trace `target`'s processes while its wrk clients make about `requests`."""
    hook = wrk.write_counted_hook(workdir, max(1, requests // len(target.clients)))
    pids = process_tree(target.pid)
    with tempfile.NamedTemporaryFile("r", dir=workdir, suffix=".strace") as out:
        # No -f: `-p PID` is the process's main thread, where its event loop runs.
        tracer = subprocess.Popen(
            ["strace", "-c", "-o", out.name, *(a for p in pids for a in ("-p", str(p)))],
            stderr=subprocess.PIPE, text=True)
        try:
            _wait_attached(tracer)
            time.sleep(ATTACH_SETTLE_S)
            load = wrk.run_clients(target.clients, target.urls(), WRK_MAX_S, hook,
                                   close=mode == NEW_CONNECTION)
        finally:
            tracer.send_signal(signal.SIGINT)
            tracer.communicate(timeout=ATTACH_TIMEOUT_S)
        calls = parse_summary(Path(out.name).read_text())
    done = max(1, load.requests)
    return SyscallCount(target.key, target.label, mode, load.requests,
                        {name: n / done for name, n in calls.items()})


def _wait_attached(tracer: subprocess.Popen) -> None:
    deadline = time.monotonic() + ATTACH_TIMEOUT_S
    while time.monotonic() < deadline:
        line = tracer.stderr.readline()
        if not line:
            raise RuntimeError(f"strace exited ({tracer.wait()}) before attaching")
        if "attached" in line:
            return
    raise RuntimeError("strace did not attach in time")
