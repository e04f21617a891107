"""`transparent-md libvirt-hook`: libvirt's `/etc/libvirt/hooks/qemu`, binding each guest's
record to its tap at VM start and parking it (served to nobody) from stop to next start.

libvirtd calls the hook as `qemu DOMAIN OPERATION SUBOP EXTRA` with the domain XML on
stdin and shows a non-zero exit's stderr to the operator (a failing `prepare` or
`start` hook stops the VM from starting). So this verb prints nothing on stdout (for
`migrate`/`restore` libvirt would take it as new XML), never calls back into libvirt,
writes all of a domain's records in one transaction or none, and on failure prints one
line and exits 1. Operations it has nothing to do for exit 0 at once.
"""

from __future__ import annotations

import argparse
import os
import sys
import syslog

from transparent_md.errors import UserError
from transparent_md.store import DEFAULT_STORE_PATH

# libvirt shows the hook's exit status; 1 is "the hook failed".
EXIT_FAILED = 1
DEFAULT_ON_STOP = "unbind"
# With --api, when no daemon listens on the socket (stopped, restarting, crashed):
#   refuse: fail the hook, so libvirt does not start the VM (nothing is written);
#   store:  write the store file (--fallback-store) directly; the daemon reads it at start;
#   allow:  write nothing, let the VM start, log a WARNING (stderr and syslog).
IF_DAEMON_DOWN_CHOICES = ("refuse", "store", "allow")
DEFAULT_IF_DAEMON_DOWN = "refuse"


def _network(value: str) -> tuple[str, str]:
    name, sep, bridge = value.partition("=")
    if not sep or not name or not bridge:
        raise argparse.ArgumentTypeError(f"{value!r}: expected NETWORK=BRIDGE")
    return name, bridge


def register(sub: argparse._SubParsersAction) -> None:
    from transparent_md.integrations.libvirt import METADATA_NS, ON_STOP_CHOICES

    p = sub.add_parser(
        "libvirt-hook", help="libvirt's qemu hook: bind records to their taps at VM start",
        description="Run as /etc/libvirt/hooks/qemu (see examples/libvirt/qemu). On "
        "prepare/start/started/reconnect, each <interface> on a served bridge becomes a "
        "record (MAC, bridge, <target dev> port, <uuid>, the domain name as hostname, and "
        f"the fields in <metadata> under {METADATA_NS}, YAML or JSON). prepare writes "
        "it parked (served to nobody); a start binds it to its tap (the link that has "
        "that name now) and serves it, or parks it, saying so on stderr, when the XML "
        "names no tap or the tap is not there; stopped/release park it (--on-stop). "
        "Other operations do nothing.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    target = p.add_mutually_exclusive_group()
    target.add_argument("--store", metavar="PATH", help="write the store file directly")
    target.add_argument("--api", metavar="SOCKET",
                        help="write through a running daemon's admin API, e.g. "
                        "/run/transparent-md/tmd.sock")
    p.add_argument("--bridge", action="append", default=[], metavar="GLOB",
                   help="only interfaces on bridges matching GLOB (repeatable; default: "
                   "every bridge; give the daemon's --bridge values)")
    p.add_argument("--network", action="append", default=[], type=_network,
                   metavar="NETWORK=BRIDGE",
                   help="bridge of a libvirt network, for type='network' interfaces whose "
                   "XML names none (repeatable)")
    p.add_argument("--if-daemon-down", choices=IF_DAEMON_DOWN_CHOICES,
                   default=DEFAULT_IF_DAEMON_DOWN,
                   help="with --api, when no daemon listens on SOCKET: refuse (default: "
                   "the hook fails and libvirt does not start the VM), store (write "
                   "--fallback-store directly; the daemon reads it when it starts), or "
                   "allow (write nothing, start the VM, log a WARNING to stderr and syslog)")
    p.add_argument("--fallback-store", metavar="PATH", default=None,
                   help="the daemon's store, for --if-daemon-down store (default "
                   f"{DEFAULT_STORE_PATH}); it must exist already")
    p.add_argument("--on-stop", choices=ON_STOP_CHOICES, default=DEFAULT_ON_STOP,
                   help="at stopped/release: unbind parks the records (default: kept for "
                   "the next start, served to nobody), remove deletes them, keep writes "
                   "nothing (they stay bound to the stopped VM's tap, a link that never "
                   "comes back: served to nobody either)")
    p.add_argument("domain", metavar="DOMAIN")
    p.add_argument("operation", metavar="OPERATION")
    p.add_argument("subop", metavar="SUBOP", nargs="?", default="-")
    p.add_argument("extra", metavar="EXTRA", nargs="?", default="-")
    p.set_defaults(handler=hook_command)


def hook_command(args: argparse.Namespace) -> int:
    from transparent_md.api.client import ApiUnreachable
    from transparent_md.integrations import libvirt

    if args.operation not in libvirt.START_OPERATIONS | libvirt.STOP_OPERATIONS:
        return 0
    if args.operation in libvirt.STOP_OPERATIONS and args.on_stop == "keep":
        return 0
    try:
        xml = sys.stdin.buffer.read(libvirt.MAX_XML_BYTES + 1)
        domain = libvirt.parse_domain(xml, bridges=tuple(args.bridge),
                                      networks=dict(args.network))
        if domain.name != args.domain:
            raise libvirt.DomainError(f"the XML on stdin is domain {domain.name!r}, the "
                                      f"arguments say {args.domain!r}")
        for reason in domain.skipped:
            print(f"transparent-md libvirt-hook: {args.domain}: skipped {reason}",
                  file=sys.stderr)
        if not domain.nics:
            return 0
        try:
            _write(_writer(args), args, domain)
        except ApiUnreachable as exc:
            if args.if_daemon_down == "refuse":
                raise UserError(f"{exc}; to let VMs start while it is down: "
                                "--if-daemon-down store|allow") from exc
            if args.if_daemon_down == "store":
                fallback = _fallback_store(args)
                outcome = f"writing the store file {fallback} instead"
            elif args.operation in libvirt.START_OPERATIONS:
                outcome = "the VM starts without its record bound"
            else:
                outcome = ("the record stays bound to the VM's tap, a link that goes with "
                           "the VM: it serves nobody")
            _warn(f"{args.domain} {args.operation}: {exc}; --if-daemon-down "
                  f"{args.if_daemon_down}: {outcome}")
            if args.if_daemon_down == "store":
                from transparent_md.integrations.writers import StoreWriter

                _write(StoreWriter(fallback), args, domain)
    except (UserError, libvirt.DomainError, ValueError, OSError) as exc:
        message = " ".join(str(exc).split())  # one line: libvirt shows it as is
        print(f"transparent-md libvirt-hook: {args.domain} {args.operation}: {message}",
              file=sys.stderr)
        return EXIT_FAILED
    return 0


def _write(writer, args: argparse.Namespace, domain) -> None:
    from transparent_md.integrations import libvirt
    from transparent_md.store.links import link_index

    if args.operation in libvirt.START_OPERATIONS:
        patches, parked = domain.patches(
            bind=args.operation not in libvirt.BEFORE_TAPS,
            link_exists=lambda name: link_index(name) is not None)
        writer.upsert(patches)
        for line in parked:
            print(f"transparent-md libvirt-hook: {args.domain}: {line}", file=sys.stderr)
    else:
        writer.stop(domain.record_ids(), remove=args.on_stop == "remove")


def _fallback_store(args: argparse.Namespace) -> str:
    """The store the daemon serves: it must exist, or the write would serve nobody."""
    from transparent_md.store.etcd_url import is_etcd_url

    path = args.fallback_store or DEFAULT_STORE_PATH
    if not is_etcd_url(path) and not os.path.isfile(path):
        raise UserError(f"--fallback-store {path} does not exist (give the daemon's --store)")
    return path


def _warn(message: str) -> None:
    """One WARNING line on stderr (libvirt's log) and in syslog (the journal)."""
    line = f"transparent-md libvirt-hook: WARNING: {message}"
    print(line, file=sys.stderr)
    syslog.openlog("transparent-md", syslog.LOG_PID, syslog.LOG_DAEMON)
    syslog.syslog(syslog.LOG_WARNING, line)


def _writer(args: argparse.Namespace):
    from transparent_md.integrations.writers import ApiWriter, StoreWriter

    return ApiWriter(args.api) if args.api else StoreWriter(args.store)
