"""`transparent-md demo`: a whole hypervisor in namespaces, served, shown as a table.

Two tenants on two bridges, both using 10.0.0.5; a guest whose only route is
169.254.169.254/32 on-link; a segment with no router. Every guest fetches its
instance-id with curl through the tc datapath. Everything is removed afterwards.
With --fleet the records live in an etcd the demo starts itself (lab.demo_fleet).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from transparent_md.cli.lab_extra import require_lab_extra
from transparent_md.errors import UserError
from transparent_md.names import DEFAULT_NETNS_PREFIX, NETNS_PREFIX_ENV

if TYPE_CHECKING:  # the lab loads only once the demo runs: installs leave it out
    from transparent_md.lab.hypervisor import GuestNs, Hypervisor
    from transparent_md.lab.netns import Topology
    from transparent_md.store import Instance

INSTANCE_ID_PATH = "/latest/meta-data/instance-id"


@dataclass(frozen=True)
class DemoGuest:
    role: str
    bridge: str
    port: str
    addr: str
    routes: tuple[str, ...]
    how: str                 # how it reaches 169.254.169.254, for the table
    instance_id: str
    hostname: str
    bind_by_mac: bool        # record keyed by the guest's MAC, else by bridge + IP


DEMO_GUESTS = (
    DemoGuest("t1-web", "br-t1", "vm-t1-web", "10.0.0.5/24", ("default via 10.0.0.1",),
              "default gateway (a real router)",
              "i-0t1web", "web.tenant1", bind_by_mac=True),
    DemoGuest("t1-onlink", "br-t1", "vm-t1-onl", "10.0.0.7/32", ("169.254.169.254/32 dev eth0",),
              "only an on-link route to .254",
              "i-0t1onlink", "onlink.tenant1", bind_by_mac=True),
    DemoGuest("t2-web", "br-t2", "vm-t2-web", "10.0.0.5/24", ("default via 10.0.0.1",),
              "gateway with no router (ARP answered)",
              "i-0t2web", "web.tenant2", bind_by_mac=False),
)
ROUTER = ("t1-router", "br-t1", "vm-t1-rtr", "10.0.0.1/24")
# The tenant-2 segment has no router: the daemon answers ARP for its gateway.
GATEWAY_RULE = "br-t2=10.0.0.1"

EPILOG = """\
what you see:
  br-t1 (tenant 1): t1-web 10.0.0.5 behind a real router, t1-onlink 10.0.0.7/32
                    whose only route is 169.254.169.254/32 dev eth0
  br-t2 (tenant 2): t2-web, also 10.0.0.5, on a segment with no router
Each guest runs curl http://169.254.169.254/latest/meta-data/instance-id and must get
its own instance-id. With --hold the topology stays up until Ctrl-C; the table lists
the namespaces, e.g.  ip netns exec <guest-ns> curl http://169.254.169.254/latest/meta-data/
With --fleet the same guests are served from a fleet store: an etcd started by the demo
in a namespace of its own, the records imported into it with `instance import --store
etcd://...`, and the daemon run with that --store (and a cache in the demo's temporary
directory). etcd, its data and the cache are removed with everything else.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="build a demo hypervisor in namespaces and show every guest served",
        description="Build a self-contained hypervisor in network namespaces, run the "
        "daemon in it and fetch instance-id from every guest with curl.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--hold", action="store_true",
                   help="keep the topology up until Ctrl-C so you can explore it")
    p.add_argument("--store", metavar="PATH",
                   help="store file for the demo's records (default: a temporary file, "
                   "so your real store is never touched)")
    p.add_argument("--fleet", action="store_true",
                   help="keep the records in an etcd the demo starts in a namespace of its "
                   "own (needs Debian's etcd-server and the etcd extra) and run the daemon "
                   "with --store etcd://...; removed afterwards like everything else")
    p.add_argument("--netns-prefix", metavar="PREFIX",
                   help=f"start of every namespace name it creates, before a random part "
                   f"(default: ${NETNS_PREFIX_ENV}, else {DEFAULT_NETNS_PREFIX!r})")
    p.set_defaults(handler=demo_command)


def demo_command(args: argparse.Namespace) -> int:
    require_lab_extra("demo")
    if args.fleet:
        if args.store:
            raise UserError("--fleet keeps the demo's records in its own etcd: leave out "
                            "--store")
        from transparent_md.lab.demo_fleet import require_fleet_tools

        require_fleet_tools()
    from transparent_md.lab.netns import Topology, netns_prefix

    try:
        prefix = netns_prefix(args.netns_prefix)
    except ValueError as exc:
        raise UserError(f"--netns-prefix: {exc}") from exc
    if os.geteuid() != 0:
        raise UserError("the demo must run as root: it creates network namespaces and "
                        "loads BPF programs")
    # SIGTERM unwinds like Ctrl-C, so cleanup runs either way.
    signal.signal(signal.SIGTERM, _interrupt)
    with tempfile.TemporaryDirectory(prefix="tmd-demo-") as tmp, Topology(prefix) as topo:
        hv, guests, records = build(topo)
        store, store_args = put_records(args, topo, hv, records, Path(tmp))
        print(f"hypervisor namespace {hv.ns}; starting transparent-md run ...", flush=True)
        daemon = hv.start_daemon(["br-t1", "br-t2"], store,
                                 ["--gateway", GATEWAY_RULE, *store_args])
        served = False
        try:
            rows = [(demo, guest, *hv.curl(guest.ns, INSTANCE_ID_PATH)) for demo, guest in guests]
            print_table(rows)
            served = all(code == 200 and body == demo.instance_id
                         for demo, _, code, body in rows)
            print("every guest got its own instance-id" if served
                  else "SOME GUESTS WERE NOT SERVED (see the table)")
            if args.hold:
                hold(hv, guests, store if args.fleet else None)
        except KeyboardInterrupt:
            pass
        finally:
            daemon.stop()
            print("cleaning up namespaces ...", flush=True)
    return 0 if served else 1


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def build(topo: Topology) -> tuple[Hypervisor, list[tuple[DemoGuest, GuestNs]], list[Instance]]:
    """The hypervisor, its guests and the records that answer them (not stored yet)."""
    from transparent_md.lab.hypervisor import Hypervisor
    from transparent_md.store import parse_record

    hv = Hypervisor(topo)
    for bridge in ("br-t1", "br-t2"):
        hv.bridge(bridge)
    role, bridge, port, addr = ROUTER
    hv.router(role, bridge=bridge, port=port, addr=addr)
    guests = []
    records = []
    for demo in DEMO_GUESTS:
        guest = hv.guest(demo.role, bridge=demo.bridge, port=demo.port, addr=demo.addr,
                         routes=demo.routes)
        guests.append((demo, guest))
        record = {"instance_id": demo.instance_id, "hostname": demo.hostname}
        if demo.bind_by_mac:
            record["mac"] = guest.mac
        else:
            record.update(ip=guest.ip, bridge=guest.bridge)
        records.append(parse_record(record))
    return hv, guests, records


def put_records(args: argparse.Namespace, topo: Topology, hv: Hypervisor,
                records: list[Instance], tmp: Path) -> tuple[str, list[str]]:
    """Store the records; returns the daemon's --store and its other store options."""
    if args.fleet:
        from transparent_md.lab.demo_fleet import start_fleet

        fleet = start_fleet(topo, hv, records, tmp)
        print(f"records in etcd at {fleet.url} (namespace {fleet.etcd.ns}); the daemon "
              f"serves them from its cache {fleet.cache_path}", flush=True)
        return fleet.url, fleet.daemon_args()
    from transparent_md.store import open_store

    store_path = args.store or str(tmp / "instances.db")
    store = open_store(store_path)
    try:
        store.put_many(records)
    finally:
        store.close()
    return store_path, []


def print_table(rows: list[tuple[DemoGuest, GuestNs, int, str]]) -> None:
    header = ("guest namespace", "bridge", "MAC", "IP", "reaches .254 by", "answer")
    lines = [header]
    for demo, guest, code, body in rows:
        answer = body if code == 200 else f"FAILED ({code or 'no answer'}: {body[:40]})"
        lines.append((guest.ns, guest.bridge, guest.mac, guest.ip, demo.how, answer))
    widths = [max(len(str(row[i])) for row in lines) for i in range(len(header))]
    for n, row in enumerate(lines):
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)))
        if n == 0:
            print("  ".join("-" * w for w in widths))
    sys.stdout.flush()


def hold(hv: Hypervisor, guests: list[tuple[DemoGuest, GuestNs]],
         fleet_url: str | None = None) -> None:
    print(f"\nholding; hypervisor: ip netns exec {hv.ns} bash")
    if fleet_url:
        print(f"  ip netns exec {hv.ns} transparent-md instance list --store {fleet_url}")
    for _, guest in guests:
        print(f"  ip netns exec {guest.ns} curl http://169.254.169.254/latest/meta-data/")
    print("Ctrl-C to clean up.", flush=True)
    while True:
        signal.pause()
