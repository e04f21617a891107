"""`transparent-md run`: the daemon. Datapath up, responder serving, clean exit on signal."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import shutil
import subprocess

from transparent_md.cli.serving import (
    READY_LINE,
    WORKER_READY_LINE,
    ServeSpec,
    serve,
    spawn_worker,
    worker_stats,
)
from transparent_md.datapath import port_state, tc
from transparent_md.datapath.datapath import (
    DEFAULT_SHADOW_PREFIX,
    Datapath,
    DatapathConfig,
)
from transparent_md.datapath.ports import GatewayRule
from transparent_md.errors import UserError
from transparent_md.store import DEFAULT_STORE_PATH
from transparent_md.topology.netns import stop_process

log = logging.getLogger("transparent_md")

# More processes than this only add memory: the kernel work per request stays.
MAX_WORKERS = 64

EPILOG = """\
what it does:
  Attaches a tc program to every port of each --bridge (and to ports added later),
  creates a veth pair md0/md1 for the responder and serves 169.254.169.254:80 there.
  Guests reach it through their ordinary default gateway, or an on-link route to
  169.254.169.254 (the program answers ARP for it), or a --gateway address on
  segments with no router. SIGTERM/SIGINT detaches everything it attached.

the host's own 169.254.169.254:
  By default the responder side (md1 holding 169.254.169.254) lives in its own
  network namespace, so a route the host itself has to an upstream metadata service
  keeps working. --responder-netns none puts md1 in the current namespace instead:
  then this host's own requests to 169.254.169.254 are answered by transparent-md.

examples:
  transparent-md run --bridge br-tenant1 --bridge br-tenant2
  transparent-md run --bridge br-iso --gateway br-iso=10.9.0.1 --store /srv/md.db
"""


def _gateway(value: str) -> GatewayRule:
    target, sep, ip = value.partition("=")
    if not sep or not target or not ip:
        raise argparse.ArgumentTypeError(f"{value!r}: expected BRIDGE_OR_PORT=IP")
    try:
        ipaddress.IPv4Address(ip)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r}: {exc}") from exc
    return GatewayRule(target=target, ip=ip)


def _listen_address(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{value!r}: expected HOST:PORT, e.g. 127.0.0.1:9464")
    return host or "0.0.0.0", int(port)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="run the daemon: intercept 169.254.169.254 on bridge ports and answer it",
        description="Run the metadata daemon in the foreground, in the current network "
        "namespace.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--bridge", action="append", required=True, metavar="BR",
                   help="bridge whose ports face guests (repeat for several)")
    p.add_argument("--store", metavar="PATH",
                   help=f"instance store (SQLite); default {DEFAULT_STORE_PATH}")
    p.add_argument("--gateway", action="append", type=_gateway, default=[],
                   metavar="BRIDGE_OR_PORT=IP",
                   help="answer ARP for IP on that bridge's ports (or that one port): "
                   "the default gateway of a segment that has no router (repeatable)")
    p.add_argument("--no-metadata-arp", action="store_true",
                   help="do not answer ARP for 169.254.169.254 (then guests with an on-link "
                   "route to it get no answer; for segments where something else owns it)")
    p.add_argument("--shadow-prefix", default=DEFAULT_SHADOW_PREFIX, metavar="CIDR",
                   help="addresses the responder sees guests as; must be unused on this "
                   f"host (default {DEFAULT_SHADOW_PREFIX})")
    p.add_argument("--responder-netns", default="auto", choices=["auto", "none"],
                   help="where md1 and 169.254.169.254 live: 'auto' (default) a namespace "
                   "of the daemon's own, 'none' the current namespace (see below)")
    p.add_argument("--token-hop-limit", type=int, default=1, metavar="N",
                   help="IP TTL of IMDSv2 token responses (default 1, like EC2)")
    p.add_argument("--tc-priority", type=int, default=tc.DEFAULT_PRIORITY, metavar="N",
                   help=f"tc filter priority we own on each port (default {tc.DEFAULT_PRIORITY})")
    p.add_argument("--name", default="tmd", help="name of this daemon's devices and pins "
                   "(default tmd; change it to run two daemons in one namespace)")
    p.add_argument("--metrics", type=_listen_address, metavar="HOST:PORT",
                   help="serve Prometheus metrics (responses, connections, datapath "
                   "counters, attached ports) on this address in the current namespace")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="responder processes sharing the port with SO_REUSEPORT "
                   "(default 1; more only help with spare cores and heavy boot storms)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"])
    p.set_defaults(handler=run_command)


def run_command(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(message)s")
    netns = "auto" if args.responder_netns == "auto" else None
    if not 1 <= args.token_hop_limit <= 255:
        raise UserError("--token-hop-limit must be 1..255")
    if not 1 <= args.tc_priority <= 0xFFFF:
        raise UserError("--tc-priority must be 1..65535")
    if not 1 <= args.workers <= MAX_WORKERS:
        raise UserError(f"--workers must be 1..{MAX_WORKERS}")
    config = DatapathConfig(
        bridges=args.bridge,
        name=args.name,
        shadow_prefix=args.shadow_prefix,
        responder_netns=netns,
        gateways=args.gateway,
        answer_metadata_arp=not args.no_metadata_arp,
        filter_slot=tc.FilterSlot(priority=args.tc_priority),
    )
    # Open the store first: a bad store path should fail before anything is attached.
    from transparent_md.store import open_store

    open_store(args.store).close()
    datapath = Datapath(config)
    datapath.start()
    stats_dir = (port_state.STATE_ROOT / datapath.instance / "stats"
                 if args.workers > 1 and args.metrics else None)
    spec = ServeSpec(
        netns_name=datapath.netns_name, pin_dir=str(datapath.pin_dir),
        shadow_prefix=config.shadow_prefix, store_path=args.store,
        token_hop_limit=args.token_hop_limit, token_secret_hex=os.urandom(32).hex(),
        reuse_port=args.workers > 1, stats_dir=str(stats_dir) if stats_dir else None,
    )
    workers: list[subprocess.Popen] = []
    try:
        if stats_dir:
            shutil.rmtree(stats_dir, ignore_errors=True)
            stats_dir.mkdir(parents=True)
        workers = start_workers(spec, args.workers - 1)

        def with_metrics(responder) -> None:
            if args.metrics:
                others = (lambda: worker_stats(spec.stats_dir)) if spec.stats_dir else None
                start_metrics(args.metrics, datapath, responder.collector(others))

        serve(spec, ready_line=READY_LINE, on_responder=with_metrics)
    finally:
        for proc in workers:
            stop_process(proc)
        if stats_dir:
            shutil.rmtree(stats_dir, ignore_errors=True)
        datapath.stop()
        log.info("stopped; filters detached, responder side removed")
    return 0


def start_workers(spec: ServeSpec, count: int) -> list[subprocess.Popen]:
    """Extra serving processes; returns once each one listens."""
    workers = []
    for _ in range(count):
        proc = spawn_worker(spec)
        workers.append(proc)
        line = proc.stdout.readline().strip()
        if line != WORKER_READY_LINE:
            for started in workers:
                stop_process(started)
            raise UserError(f"a responder worker failed to start (exit {proc.wait()})")
    log.info("%d responder processes share 169.254.169.254:80", count + 1)
    return workers


def start_metrics(address: tuple[str, int], datapath: Datapath, responder_collector) -> None:
    """Prometheus endpoint in a background thread (prometheus_client's own server)."""
    from prometheus_client import CollectorRegistry, start_http_server

    from transparent_md.datapath.metrics import DatapathCollector

    registry = CollectorRegistry()
    registry.register(responder_collector)
    registry.register(DatapathCollector(datapath))
    host, port = address
    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise UserError(f"--metrics {host}:{port}: {exc.strerror}") from exc
    log.info("metrics on http://%s:%d/metrics", host, port)

