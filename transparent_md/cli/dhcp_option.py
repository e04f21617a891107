"""`transparent-md dhcp-option`: the DHCP option 121/249 that gives guests a metadata route."""

from __future__ import annotations

import argparse
import sys

from transparent_md.dhcp.classless_routes import (
    METADATA_NETWORK,
    ON_LINK,
    build_routes,
    decode,
    parse_address,
    parse_hex,
    parse_route,
)
from transparent_md.dhcp.formats import FORMATS_WITH_TAG, RENDERERS, render
from transparent_md.errors import UserError

DEFAULT_FORMAT = "dnsmasq"
EXIT_OK = 0
EXIT_USER_ERROR = 2  # same code argparse uses for a bad command line

EPILOG = f"""\
two ways a guest reaches {METADATA_NETWORK.network_address}:
  default-gateway mode (no DHCP change): the guest sends metadata traffic to its
      default gateway; the port's tc program intercepts it. Nothing to run here.
  route-based mode (this command): the DHCP server hands out option 121 (and 249
      for old Windows) with a {METADATA_NETWORK} route, either on-link (the guest
      ARPs for the address and the tc program answers) or --via a next hop the
      port is configured to answer ARP for. Use it for networks without a router,
      guests with several NICs, or images whose default route points elsewhere.

RFC 3442 clients IGNORE option 3 (router) when option 121 is present: if the
guest needs a default route, give --router so it is part of option 121.

examples:
  transparent-md dhcp-option                          # dnsmasq, on-link
  transparent-md dhcp-option --via 10.0.0.253 --router 10.0.0.1 --format isc
  transparent-md dhcp-option --route 10.9.0.0/16,10.0.0.2 --format kea
  transparent-md dhcp-option --format dnsmasq --tag meta   # only for tag:meta hosts
  transparent-md dhcp-option --decode 20a9fea9fe00000000   # what does a server send?
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `dhcp-option` verb to the top-level parser."""
    parser = subparsers.add_parser(
        "dhcp-option",
        help="print DHCP option 121/249 (classless routes) for route-based guests",
        description=(
            f"Print the DHCP server configuration that gives guests a route to\n"
            f"{METADATA_NETWORK} (RFC 3442 option 121, and the same bytes as option 249),\n"
            "or decode such an option with --decode."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--via",
        metavar="NEXT_HOP",
        help=f"next hop for the {METADATA_NETWORK} route (default: on-link, {ON_LINK})",
    )
    parser.add_argument(
        "--route",
        action="append",
        default=[],
        metavar="CIDR[,VIA]",
        help="another route to send, e.g. 10.9.0.0/16,10.0.0.2 (no VIA: on-link); repeatable",
    )
    parser.add_argument(
        "--router",
        metavar="IP",
        help="add the default route 0.0.0.0/0 via IP (clients ignore option 3 when 121 is set)",
    )
    parser.add_argument(
        "--format",
        choices=sorted(RENDERERS),
        default=DEFAULT_FORMAT,
        help=f"DHCP server to write for (default: {DEFAULT_FORMAT})",
    )
    parser.add_argument(
        "--tag",
        help="dnsmasq only: send the option only to clients with this tag (tag:NAME)",
    )
    parser.add_argument(
        "--decode",
        metavar="HEX",
        help="print the routes a hex option value carries (colons/spaces allowed) and exit",
    )
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    """Print the option or the decoded routes; a UserError becomes one line on stderr."""
    try:
        sys.stdout.write(decode_text(args.decode) if args.decode else option_text(args))
    except UserError as exc:
        print(f"transparent-md dhcp-option: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    return EXIT_OK


def option_text(args: argparse.Namespace) -> str:
    if args.tag and args.format not in FORMATS_WITH_TAG:
        raise UserError(f"--tag applies to --format dnsmasq only, not {args.format}")
    via = parse_address(args.via, "--via next hop") if args.via else ON_LINK
    router = parse_address(args.router, "--router address") if args.router else None
    extra = [parse_route(spec) for spec in args.route]
    return render(args.format, build_routes(via, extra, router), args.tag)


def decode_text(hex_text: str) -> str:
    return "".join(f"{route}\n" for route in decode(parse_hex(hex_text)))
