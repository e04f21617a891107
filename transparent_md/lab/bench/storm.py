"""Boot-storm driver: M guests boot within a window, each running cloud-init's requests.

Guest i starts at i/M of the start window (`window_s`): 1 s is a rack powered on at
once, 10 s a more usual boot storm. The guests are dealt to a few driver processes
(`split`), every one of them spread over the whole window and started on one shared
CLOCK_MONOTONIC time: one Python process playing 1,000 guests needs more than a core
on a slow machine, and then measures its own queue instead of the daemon. A socket
belongs to the network namespace it was created in, so each connection's socket is
made with this thread briefly inside the guest's namespace (setns there and back,
nothing else runs in between); the event loop then serves them all from here. Every
request opens a fresh connection, as cloud-init's URL helper does.

Run as `python -m transparent_md.lab.bench.storm SPEC.json` (one of `split()`'s specs
with a "result" path added); writes there the JSON part that `merge()` combines. Not to
stdout: a part holds every latency (hundreds of KB), and a pipe nobody reads yet, with
Python unbuffered (PYTHONUNBUFFERED), lost all but its first 64 KiB in a short write.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from dataclasses import dataclass, field

from transparent_md.datapath.responder_side import entered_netns
from transparent_md.lab.bench import cloudinit
from transparent_md.lab.bench.stats import percentile

METADATA = ("169.254.169.254", 80)
# A request not answered in this long counts as failed (cloud-init's own url timeout
# is longer, but anything near it is a failed storm anyway).
REQUEST_TIMEOUT_S = 5.0
# Response bytes read per recv: every metadata answer here fits in one.
RECV_BYTES = 65536
# How many failures are kept verbatim for the report.
FAILURE_EXAMPLES = 5

# What a request was doing when it failed: waiting for the handshake, or for the reply.
CONNECTING, ANSWERING = "connect", "reply"


@dataclass
class Tally:
    latencies_ms: list[float] = field(default_factory=list)
    failures: int = 0
    examples: list[str] = field(default_factory=list)
    # "<phase> <exception>" or "HTTP <status>" -> how many failed so.
    causes: dict[str, int] = field(default_factory=dict)

    def fail(self, cause: str, what: str) -> None:
        self.failures += 1
        self.causes[cause] = self.causes.get(cause, 0) + 1
        if len(self.examples) < FAILURE_EXAMPLES:
            self.examples.append(what)


class GuestClient:
    """Opens connections from one guest's namespace and runs cloud-init's sequence."""

    def __init__(self, ns: str, tally: Tally) -> None:
        self.ns = ns
        self.tally = tally
        self.requests = 0
        self.phase = CONNECTING

    def new_socket(self) -> socket.socket:
        with entered_netns(self.ns):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        return sock

    async def fetch(self, method: str, path: str, headers: dict[str, str],
                    accepted: frozenset[int]) -> tuple[int, bytes] | None:
        self.requests += 1
        started = time.perf_counter()
        try:
            status, body = await asyncio.wait_for(self._exchange(method, path, headers),
                                                  REQUEST_TIMEOUT_S)
        except (OSError, TimeoutError, ValueError) as exc:
            self.tally.fail(f"{self.phase} {type(exc).__name__}",
                            f"{self.ns} {method} {path}: {self.phase}: "
                            f"{type(exc).__name__} {exc}")
            return None
        self.tally.latencies_ms.append((time.perf_counter() - started) * 1000)
        if status not in accepted:
            self.tally.fail(f"HTTP {status}", f"{self.ns} {method} {path}: HTTP {status}")
            return None
        return status, body

    async def _exchange(self, method: str, path: str,
                        headers: dict[str, str]) -> tuple[int, bytes]:
        loop = asyncio.get_running_loop()
        sock = self.new_socket()
        self.phase = CONNECTING
        try:
            await loop.sock_connect(sock, METADATA)
            self.phase = ANSWERING
            head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            request = (f"{method} {path} HTTP/1.1\r\nHost: 169.254.169.254\r\n"
                       f"User-Agent: Cloud-Init/bench\r\nConnection: close\r\n{head}\r\n")
            await loop.sock_sendall(sock, request.encode())
            chunks = []
            while chunk := await loop.sock_recv(sock, RECV_BYTES):
                chunks.append(chunk)
        finally:
            sock.close()
        return parse_response(b"".join(chunks))


def parse_response(raw: bytes) -> tuple[int, bytes]:
    """(status, body) of a complete HTTP/1.1 response read until the server closed."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    if not sep or len(parts) < 2 or not parts[1].isdigit():
        raise ValueError(f"malformed response {raw[:60]!r}")
    return int(parts[1]), body


def split(namespaces: list[str], window_s: float, drivers: int,
          start_at: float) -> list[dict]:
    """One spec per driver: guest i (of M) starts at `start_at` + i/M of the window and
    goes to driver i mod `drivers`, so every driver's guests span the whole window."""
    offsets = [i * window_s / max(1, len(namespaces)) for i in range(len(namespaces))]
    count = max(1, min(drivers, len(namespaces)))
    return [{"namespaces": namespaces[k::count], "offsets": offsets[k::count],
             "start_at": start_at} for k in range(count)]


async def run_part(namespaces: list[str], offsets: list[float], start_at: float) -> dict:
    """Boot these guests, each at `start_at` (time.monotonic()) + its offset."""
    tally = Tally()
    clients = [GuestClient(ns, tally) for ns in namespaces]
    done_at: list[float] = []
    started_cpu = time.process_time()

    async def one(offset: float, client: GuestClient) -> None:
        await asyncio.sleep(max(0.0, start_at + offset - time.monotonic()))
        await cloudinit.boot(client.fetch)
        done_at.append(time.monotonic() - start_at)

    await asyncio.gather(*(one(o, c) for o, c in zip(offsets, clients, strict=True)))
    return {
        "requests": sum(c.requests for c in clients),
        "latencies_ms": tally.latencies_ms,
        "failures": tally.failures,
        "failure_examples": tally.examples,
        "failure_causes": tally.causes,
        "last_guest_done_s": max(done_at, default=0.0),
        "cpu_s": time.process_time() - started_cpu,
        "elapsed_s": time.monotonic() - start_at,
    }


def merge(parts: list[dict], guests: int, window_s: float) -> dict:
    """The storm's figures from every driver's part."""
    lat = sorted(x for part in parts for x in part["latencies_ms"])
    requests = sum(part["requests"] for part in parts)
    causes: dict[str, int] = {}
    for part in parts:
        for cause, n in part["failure_causes"].items():
            causes[cause] = causes.get(cause, 0) + n
    return {
        "guests": guests,
        "start_window_s": window_s,
        "drivers": len(parts),
        "requests": requests,
        "requests_per_guest": requests / guests if guests else 0,
        "failures": sum(part["failures"] for part in parts),
        "failure_examples": [x for part in parts
                             for x in part["failure_examples"]][:FAILURE_EXAMPLES],
        "failure_causes": causes,
        "p50_ms": percentile(lat, 50),
        "p99_ms": percentile(lat, 99),
        "max_ms": lat[-1] if lat else 0.0,
        "last_guest_done_s": max((part["last_guest_done_s"] for part in parts), default=0.0),
        # The drivers' own cost, and the busiest one's share of a CPU over its run: near
        # 1 it was CPU-bound, and its latencies include its own queue.
        "driver_cpu_us_per_request": (
            round(sum(part["cpu_s"] for part in parts) * 1e6 / requests, 2)
            if requests else None),
        "driver_busiest_cpu_share": round(max(
            (part["cpu_s"] / part["elapsed_s"] for part in parts if part["elapsed_s"] > 0),
            default=0.0), 3),
    }


def main() -> None:
    import uvloop

    with open(sys.argv[1]) as f:
        spec = json.load(f)
    part = uvloop.run(run_part(spec["namespaces"], spec["offsets"], spec["start_at"]))
    with open(spec["result"], "w") as f:
        json.dump(part, f)


if __name__ == "__main__":
    main()
