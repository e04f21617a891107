"""wrk load from many namespaces at once, summed into one result per server.

Each guest runs its own wrk (one thread, a few connections), all started together, so
the server sees the load a busy hypervisor sees: many peers, not one. wrk prints its
summary through a Lua `done` hook as one JSON line, which is parsed instead of text.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# Marks wrk's machine-readable line among its human-readable output.
RESULT_MARK = "WRKJSON "
# wrk latencies are in microseconds; the Lua hook prints them raw.
_DONE_HOOK = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,' ..
    '"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}\\n',
    "WRKJSON ", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""
# Appended to the done hook for a counted run: wrk has no request-count option and
# `wrk.thread:stop()` still waits out the duration, so once it has read LIMIT answers
# the hook prints the result line itself (the count; no latencies) and ends wrk.
_STOP_AFTER_HOOK = """
local answered = 0
response = function(status, headers, body)
  answered = answered + 1
  if answered >= %d then
    io.write(string.format(
      '%%s{"requests":%%d,"duration_us":1,"p50_us":0,"p99_us":0,' ..
      '"connect":0,"read":0,"write":0,"status":0,"timeout":0}\\n', "WRKJSON ", answered))
    io.flush()
    os.exit(0)
  end
end
"""
# Connections per wrk process: enough to keep a single-threaded server busy without
# measuring queueing in its accept backlog.
CONNECTIONS_PER_CLIENT = 4
# Extra seconds a wrk process may take past its duration before it counts as hung.
WRK_GRACE_S = 15.0


@dataclass(frozen=True)
class LoadResult:
    """The summed view of all clients of one run."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    clients: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def write_hook(directory: Path) -> Path:
    path = directory / "wrk_done.lua"
    path.write_text(_DONE_HOOK)
    return path


def write_counted_hook(directory: Path, requests: int) -> Path:
    """A hook that prints the result line and stops wrk after `requests` answers."""
    path = directory / f"wrk_done_after_{requests}.lua"
    path.write_text(_DONE_HOOK + _STOP_AFTER_HOOK % requests)
    return path


def wrk_argv(url: str, duration_s: float, hook: Path, close: bool) -> list[str]:
    argv = ["wrk", "-t1", f"-c{CONNECTIONS_PER_CLIENT}", f"-d{duration_s:g}s",
            "-s", str(hook)]
    if close:
        argv += ["-H", "Connection: close"]
    return argv + [url]


def run_clients(namespaces: Sequence[str], urls: Sequence[str], duration_s: float,
                hook: Path, close: bool) -> LoadResult:
    """Start one wrk per namespace (several per name if it repeats), each to its URL,
    wait, sum up."""
    procs = [
        subprocess.Popen(["ip", "netns", "exec", ns, *wrk_argv(url, duration_s, hook, close)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for ns, url in zip(namespaces, urls, strict=True)
    ]
    outputs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=duration_s + WRK_GRACE_S)
            outputs.append(parse_output(out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return combine(outputs)


def parse_output(stdout: str, stderr: str) -> dict:
    for line in stdout.splitlines():
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK):])
    raise RuntimeError(f"wrk printed no result:\n{stdout}\n{stderr}")


def combine(results: Sequence[dict]) -> LoadResult:
    """Sum requests over clients; p50 weighted by requests, p99 the worst client's.

    Per-client histograms are not exported by wrk, so exact merged percentiles are not
    available: the worst p99 is the conservative choice.
    """
    total = sum(r["requests"] for r in results)
    seconds = max((r["duration_us"] for r in results), default=0) / 1e6
    p50 = sum(r["p50_us"] * r["requests"] for r in results) / total if total else 0.0
    p99 = max((r["p99_us"] for r in results), default=0)
    errors = sum(r[k] for r in results for k in ("connect", "read", "write", "status",
                                                  "timeout"))
    return LoadResult(requests=total, seconds=seconds, p50_ms=p50 / 1000, p99_ms=p99 / 1000,
                      errors=errors, clients=len(results))
