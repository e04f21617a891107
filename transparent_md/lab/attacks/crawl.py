"""The victim: a cloud-init-like crawl, repeated, with every failure and latency kept.

A booting guest fetches ~40 paths, each on a fresh connection, one after another.
This does the same again and again for --seconds from the victim's namespace while
a neighbour attacks, and reports what the victim suffered. The paths come from the
victim's own first crawl of its meta-data listings (so every one must be 200), and
the same list is fetched on every round.

    ip netns exec VICTIM python -m transparent_md.lab.attacks.crawl --seconds 30

Prints one JSON line: requests, failures (no answer in time, or not 200), a few
failure examples, latency p50/p99/max in ms, rounds.
"""

from __future__ import annotations

import argparse
import json
import socket
import time

from transparent_md.lab.bench.cloudinit import listing_children
from transparent_md.lab.bench.stats import percentile

METADATA = ("169.254.169.254", 80)
# Requests per round, as many as a cloud-init boot makes.
REQUESTS_PER_ROUND = 40
# cloud-init's own URL timeout is longer; an answer later than this is a failed boot
# step for our purposes.
REQUEST_TIMEOUT_S = 5.0
# Pause between rounds: a guest boots, then another does; the victim is not a flood.
DEFAULT_PAUSE_S = 0.1
RECV_BYTES = 65536
FAILURE_EXAMPLES = 5
ROOT = "/latest/meta-data/"
# Leaves every record has, fetched when the listings themselves cannot be read (the
# victim is already being denied): the failures then show in the rounds.
FALLBACK_LEAVES = ("instance-id", "ami-id", "hostname", "local-hostname", "instance-type",
                   "mac", "placement/availability-zone", "reservation-id")


def fetch(path: str, timeout: float = REQUEST_TIMEOUT_S) -> tuple[int, bytes]:
    """GET `path` on a fresh connection, read to the server's close: (status, body)."""
    with socket.create_connection(METADATA, timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 169.254.169.254\r\n"
                     "User-Agent: Cloud-Init/victim\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while chunk := sock.recv(RECV_BYTES):
            chunks.append(chunk)
    raw = b"".join(chunks)
    head, sep, body = raw.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    if not sep or len(parts) < 2 or not parts[1].isdigit():
        raise ValueError(f"malformed response {raw[:60]!r}")
    return int(parts[1]), body


def discover(count: int = REQUESTS_PER_ROUND) -> list[str]:
    """`count` paths a cloud-init crawl fetches, walking the listings breadth first."""
    paths, queue = [], [ROOT]
    while queue and len(paths) < count:
        directory = queue.pop(0)
        paths.append(directory)
        status, body = fetch(directory)
        if status != 200:
            raise ValueError(f"{directory} answered {status}")
        for child in listing_children(body):
            (queue if child.endswith("/") else paths).append(directory + child)
    while len(paths) < count:  # a small tree: fetch it again, as a retrying boot would
        paths += paths[: count - len(paths)]
    return paths[:count]


def crawl(seconds: float, pause: float) -> dict:
    failures, examples, rounds = 0, [], 0
    try:
        paths = discover()
    except (OSError, ValueError) as exc:
        failures += 1
        examples.append(f"discovery: {type(exc).__name__} {exc}")
        leaves = [ROOT] + [ROOT + leaf for leaf in FALLBACK_LEAVES]
        paths = (leaves * REQUESTS_PER_ROUND)[:REQUESTS_PER_ROUND]
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        rounds += 1
        for path in paths:
            started = time.perf_counter()
            try:
                status, _ = fetch(path)
                problem = None if status == 200 else f"HTTP {status}"
            except (OSError, ValueError) as exc:
                problem = f"{type(exc).__name__} {exc}"
            latencies.append((time.perf_counter() - started) * 1000)
            if problem:
                failures += 1
                if len(examples) < FAILURE_EXAMPLES:
                    examples.append(f"{path}: {problem}")
        time.sleep(pause)
    lat = sorted(latencies)
    return {"requests": len(lat), "failures": failures, "failure_examples": examples,
            "p50_ms": round(percentile(lat, 50), 3), "p99_ms": round(percentile(lat, 99), 3),
            "max_ms": round(lat[-1], 3) if lat else 0.0, "rounds": rounds}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=10.0, help="keep crawling this long")
    p.add_argument("--pause", type=float, default=DEFAULT_PAUSE_S,
                   help="seconds between rounds")
    args = p.parse_args(argv)
    print(json.dumps(crawl(args.seconds, args.pause)), flush=True)


if __name__ == "__main__":
    main()
