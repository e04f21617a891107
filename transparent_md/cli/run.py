"""`transparent-md run`: arguments in, a `Daemon` out (see transparent_md.daemon)."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import re

from transparent_md.cli.store_options import add_store_options, etcd_tls
from transparent_md.daemon.store_source import CACHE_DIR
from transparent_md.datapath import choice, tc
from transparent_md.datapath.datapath import DEFAULT_SHADOW_PREFIX, DatapathConfig
from transparent_md.datapath.ports import GatewayRule
from transparent_md.errors import UserError
from transparent_md.guest_limits import GUEST_LIMITS, PORT_LIMITS, Limit
from transparent_md.names import DEFAULT_NAME, NAME_MAX, DaemonNames
from transparent_md.responder.tokens import DEFAULT_TOKEN_HOP_LIMIT

log = logging.getLogger("transparent_md")

# More processes than this only add memory: the kernel work per request stays.
MAX_WORKERS = 64
# `--responder-netns-prefix`: a namespace name's safe start (file names under /run/netns).
NETNS_PREFIX_MAX = 48
NETNS_PREFIX = re.compile(rf"[A-Za-z][A-Za-z0-9_-]{{0,{NETNS_PREFIX_MAX - 1}}}")

EPILOG = """\
what it does:
  Attaches a tc program to the guest-facing ports (tap/tun and veth, or --port) of each
  --bridge, and to such ports added later (or, with --datapath raw, a packet socket and
  an nftables bridge table: see docs/how-it-works.md); creates a veth pair <name>-md / md1 for the
  responder and serves 169.254.169.254:80 there. Guests reach it through their ordinary
  default gateway, or an on-link route to 169.254.169.254 (the program answers ARP for
  it), or a --gateway address on segments with no router. SIGTERM/SIGINT detaches
  everything it attached; SIGHUP re-reads --config (bridges, ports, gateways).
  One daemon per --name in a network namespace, and one per port.

the host's own 169.254.169.254:
  By default the responder side (md1 holding 169.254.169.254) lives in its own
  network namespace, so a route the host itself has to an upstream metadata service
  keeps working. --responder-netns none puts it (named <name>-md1) in the current
  namespace instead: then this host's own requests to 169.254.169.254 are answered by
  transparent-md.

examples:
  transparent-md run --bridge br-tenant1 --bridge br-tenant2
  transparent-md run --bridge br-iso --gateway br-iso=10.9.0.1 --store /srv/md.db
  transparent-md run --bridge 'qbr*' --exclude-port 'tap-mgmt*' --metrics 127.0.0.1:9464
  transparent-md run --config /etc/transparent-md/run.yaml
"""


def _gateway(value: str) -> GatewayRule:
    target, sep, ip = value.partition("=")
    if not sep or not target or not ip:
        raise argparse.ArgumentTypeError(f"{value!r}: expected BRIDGE_OR_PORT=IP")
    try:
        address = ipaddress.ip_address(ip)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r}: {exc}") from exc
    if address.is_multicast or address.is_unspecified or address.is_loopback:
        raise argparse.ArgumentTypeError(f"{value!r}: not a unicast address")
    return GatewayRule(target=target, ip=str(address))


def _amount(value: str) -> float:
    try:
        amount = float(value)
    except ValueError:
        amount = -1.0
    if amount < 0:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a number >= 0 (0: no limit)")
    return int(amount) if amount.is_integer() else amount


def _count(value: str) -> int:
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"{value!r}: expected a whole number >= 0")
    return int(value)


def _netns_prefix(value: str) -> str:
    if not NETNS_PREFIX.fullmatch(value):
        raise argparse.ArgumentTypeError(f"{value!r}: 1-{NETNS_PREFIX_MAX} letters, digits, "
                                         "'-' or '_', starting with a letter")
    return value


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
    p.add_argument("--config", metavar="FILE",
                   help="YAML file of these same options (keys without the leading dashes, "
                   "lists for repeatable ones); the command line wins; SIGHUP re-reads "
                   "bridge, port, exclude-port and gateway from it without a restart")
    p.add_argument("--bridge", action="append", default=[], metavar="BR",
                   help="bridge whose ports face guests (repeat for several); a glob such "
                   "as 'qbr*' follows matching bridges as they come and go, an exact name "
                   "must exist")
    p.add_argument("--port", action="append", default=[], metavar="GLOB", dest="ports",
                   help="attach only the bridge ports matching GLOB (repeatable), whatever "
                   "their kind; default: every tap/tun and veth port, never a physical "
                   "NIC, bond, VLAN or VXLAN/GRE uplink")
    p.add_argument("--exclude-port", action="append", default=[], metavar="GLOB",
                   help="never attach ports matching GLOB (repeatable)")
    add_store_options(p)  # --store PATH|etcd://..., --etcd-cacert/--etcd-cert/--etcd-key
    p.add_argument("--cache", metavar="PATH",
                   help="with an etcd:// store: the local SQLite copy served from, kept "
                   "across restarts so a host serves while etcd is down (default "
                   f"{CACHE_DIR}/cache-<name>-<netns inode>.db)")
    p.add_argument("--gateway", action="append", type=_gateway, default=[],
                   metavar="BRIDGE_OR_PORT=IP",
                   help="answer ARP (IPv4) or Neighbour Solicitations (IPv6) for IP on "
                   "that bridge's ports (or that one port): the default gateway of a "
                   "segment that has no router (repeatable)")
    p.add_argument("--no-metadata-arp", action="store_true",
                   help="do not answer ARP for 169.254.169.254 nor Neighbour Solicitations for "
                   "fd00:ec2::254 and fe80::a9fe:a9fe (then guests with an on-link "
                   "route to it get no answer; for segments where something else owns it)")
    p.add_argument("--datapath", default=choice.DEFAULT_DATAPATH, choices=choice.DATAPATHS,
                   help=choice.DATAPATH_HELP)
    p.add_argument("--shadow-prefix", default=DEFAULT_SHADOW_PREFIX, metavar="CIDR",
                   help="addresses the responder sees guests as; must be unused on this "
                   f"host (default {DEFAULT_SHADOW_PREFIX})")
    p.add_argument("--responder-netns", default="auto", choices=["auto", "none"],
                   help="where md1 and 169.254.169.254 live: 'auto' (default) a namespace "
                   "of the daemon's own, 'none' the current namespace (see below)")
    p.add_argument("--responder-netns-prefix", type=_netns_prefix, default=None,
                   metavar="PREFIX",
                   help="put PREFIX before the name of that namespace of its own "
                   "(<name>-<netns inode>-responder): test labs and the bench name every "
                   "namespace they make with a prefix of theirs (default: none)")
    p.add_argument("--token-hop-limit", type=int, default=DEFAULT_TOKEN_HOP_LIMIT, metavar="N",
                   help="IP TTL of IMDSv2 token responses "
                   f"(default {DEFAULT_TOKEN_HOP_LIMIT}, like EC2)")
    p.add_argument("--tc-priority", type=int, default=tc.DEFAULT_PRIORITY, metavar="N",
                   help=f"tc filter priority we own on each port (default {tc.DEFAULT_PRIORITY})")
    p.add_argument("--name", default=DEFAULT_NAME, help="name of this daemon's devices and "
                   f"pins (default {DEFAULT_NAME}, at most {NAME_MAX} characters; change it "
                   "to run two daemons in one namespace)")
    p.add_argument("--metrics", type=_listen_address, metavar="HOST:PORT",
                   help="serve Prometheus metrics (responses, connections, datapath "
                   "counters, attached ports) on this address in the current namespace")
    p.add_argument("--api", default=None, metavar="PATH",
                   help="serve the local admin API (records over HTTP/JSON) on this unix "
                   "socket, mode 0600; 'none' serves none (default "
                   "/run/transparent-md/<name>.sock)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="responder processes sharing the port with SO_REUSEPORT "
                   "(default 1; more only help with spare cores and heavy boot storms)")
    port = p.add_argument_group(
        "hostile guests, in the datapath (per port; 0 disables each; each is also a "
        "--config key of the same name; see docs/hostile-guests.md)")
    for limit in PORT_LIMITS:
        _add_limit(port, limit)
    port.add_argument("--no-mac-lock", action="store_true",
                      help="do not lock a MAC to the first port it asked from; only for "
                      "hosts whose hypervisor already stops MAC spoofing (libvirt "
                      "clean-traffic, ebtables): without either, a guest copying a "
                      "neighbour's MAC and IP gets the neighbour's data")
    guests = p.add_argument_group(
        "hostile guests, in the responder (per guest = port, MAC, IP; 0 disables each; "
        "each is also a --config key of the same name)")
    for limit in GUEST_LIMITS:
        _add_limit(guests, limit)
    p.add_argument("--access-log", action="store_true",
                   help="log one line per request: port, bridge, MAC, IP, instance, method, "
                   "path, status and microseconds (costs CPU; see docs/operations.md)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"])
    p.add_argument("--log-format", default="text", choices=["text", "json"],
                   help="log lines on stderr as plain text (default) or one JSON object "
                   "per line (journald and log pipelines take either as is)")
    p.set_defaults(handler=run_command, run_parser=p)


def _add_limit(group: argparse._ArgumentGroup, limit: Limit) -> None:
    """One option of guest_limits.LIMITS; its dest is the field it sets."""
    group.add_argument(limit.flag, dest=limit.field, type=_count if limit.whole else _amount,
                       metavar=limit.metavar, default=limit.default,
                       help=f"{limit.help} (default {limit.shown()})")


def api_socket_choice(value: str | None, names: DaemonNames) -> tuple[str | None, bool]:
    """`--api`: (socket path or None for no API, whether it is the default path).

    The default path is named by --name alone; the daemon serves no API (and says so)
    when a same-named daemon in another network namespace already serves it, rather than
    refusing to start. A path given with --api that is in use is an error.
    """
    if value is None:
        return str(names.api_socket), True
    return (None if value == "none" else value), False


def run_command(cmdline: argparse.Namespace) -> int:
    from transparent_md.cli import run_config
    from transparent_md.daemon import logs

    parser = cmdline.run_parser
    args = cmdline
    if cmdline.config:
        args = run_config.merge(cmdline, parser, run_config.read(cmdline.config, parser))
    if not args.bridge:
        raise UserError("no --bridge given (on the command line or in --config): name at "
                        "least one bridge whose ports face guests")
    recent_problems = logs.configure(args.log_level, args.log_format)
    if not 1 <= args.token_hop_limit <= 255:
        raise UserError("--token-hop-limit must be 1..255")
    if not 1 <= args.tc_priority <= 0xFFFF:
        raise UserError("--tc-priority must be 1..65535")
    if not 1 <= args.workers <= MAX_WORKERS:
        raise UserError(f"--workers must be 1..{MAX_WORKERS}")
    if not args.name or len(args.name) > NAME_MAX or not args.name.replace("-", "").isalnum():
        raise UserError(f"--name {args.name!r}: 1..{NAME_MAX} letters, digits or '-'")
    from transparent_md.daemon.daemon import Daemon, DaemonConfig, PortSettings
    from transparent_md.responder.limits import ResponderLimits

    def reload_settings() -> PortSettings:
        fresh = run_config.merge(cmdline, parser, run_config.read(cmdline.config, parser))
        for dest, value in vars(fresh).items():
            if dest not in run_config.RELOADABLE and value != getattr(args, dest, None):
                log.warning("%s changed in %s: takes effect at the next restart",
                            dest, cmdline.config)
        return PortSettings(fresh.bridge, fresh.ports, fresh.exclude_port, fresh.gateway)

    names = DaemonNames.here(args.name, own_responder_netns=args.responder_netns == "auto",
                             netns_prefix=args.responder_netns_prefix or "")
    config = DaemonConfig(
        datapath=DatapathConfig(
            bridges=args.bridge,
            include_ports=args.ports,
            exclude_ports=args.exclude_port,
            names=names,
            shadow_prefix=args.shadow_prefix,
            gateways=args.gateway,
            answer_metadata_arp=not args.no_metadata_arp,
            filter_position=tc.FilterPosition(priority=args.tc_priority),
            mac_lock=not args.no_mac_lock,
            **{limit.field: getattr(args, limit.field) for limit in PORT_LIMITS},
            datapath=args.datapath,
        ),
        store_path=args.store,
        etcd_tls=etcd_tls(args),
        cache_path=args.cache,
        token_hop_limit=args.token_hop_limit,
        workers=args.workers,
        metrics=args.metrics,
        **dict(zip(("api_socket", "api_socket_is_default"), api_socket_choice(args.api, names),
                   strict=True)),
        recent_problems=recent_problems,
        responder_limits=ResponderLimits.from_flags(
            **{limit.field: getattr(args, limit.field) for limit in GUEST_LIMITS}),
        access_log=args.log_format if args.access_log else None,
        reload_settings=reload_settings if cmdline.config else None,
    )
    return Daemon(config).run()
