"""RFC 3442 classless static routes: the bytes of DHCP option 121 (and 249).

Route-based guests learn `169.254.169.254/32` from this option instead of using their
default gateway. Option 249 is Microsoft's older code for the very same bytes.

Each route is encoded as: one octet prefix length, then only the *significant*
octets of the destination (ceil(prefix / 8) of them), then the 4-octet next hop.
A next hop of 0.0.0.0 means "on-link": the guest ARPs for the destination itself.
Pure functions only: no I/O, so it can be tested exhaustively.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import AddressValueError, IPv4Address, IPv4Network, NetmaskValueError

from transparent_md.errors import UserError

OPTION_CLASSLESS_STATIC_ROUTE = 121  # RFC 3442
OPTION_MS_CLASSLESS_STATIC_ROUTE = 249  # Windows clients before Vista; same encoding

METADATA_ADDRESS = IPv4Address("169.254.169.254")
METADATA_NETWORK = IPv4Network(f"{METADATA_ADDRESS}/32")
DEFAULT_NETWORK = IPv4Network("0.0.0.0/0")
# RFC 3442: a router of 0.0.0.0 means the destination is reachable on the link itself.
ON_LINK = IPv4Address("0.0.0.0")

IPV4_OCTETS = 4
BITS_PER_OCTET = 8
MAX_PREFIX_LENGTH = IPV4_OCTETS * BITS_PER_OCTET
# A DHCP option's length field is one octet, so one option carries at most 255 bytes.
MAX_OPTION_LENGTH = 255

# Separators operators paste from other tools: dnsmasq "a9:fe", "0x..", spaces, dashes.
_HEX_SEPARATORS = re.compile(r"[\s:.\-]")


@dataclass(frozen=True, order=True)
class Route:
    """One classless route: traffic for `destination` goes to `gateway` (0.0.0.0 = on-link)."""

    destination: IPv4Network
    gateway: IPv4Address = ON_LINK

    @property
    def on_link(self) -> bool:
        return self.gateway == ON_LINK

    def __str__(self) -> str:
        hop = "on-link" if self.on_link else f"via {self.gateway}"
        return f"{self.destination} {hop}"


def significant_octets(prefix_length: int) -> int:
    """How many destination octets RFC 3442 sends for a prefix: ceil(prefix / 8)."""
    return -(-prefix_length // BITS_PER_OCTET)


def encoded_length(route: Route) -> int:
    return 1 + significant_octets(route.destination.prefixlen) + IPV4_OCTETS


def encode(routes: Sequence[Route]) -> bytes:
    """The option value carrying `routes`, in the order given (clients keep that order)."""
    check_route_set(routes)
    out = bytearray()
    for route in routes:
        prefix = route.destination.prefixlen
        out.append(prefix)
        out += route.destination.network_address.packed[: significant_octets(prefix)]
        out += route.gateway.packed
    return bytes(out)


def decode(data: bytes) -> list[Route]:
    """The routes an option value carries; raises UserError on malformed bytes."""
    if not data:
        raise UserError("empty option: RFC 3442 needs at least one route (5 bytes)")
    routes: list[Route] = []
    offset = 0
    while offset < len(data):
        prefix = data[offset]
        if prefix > MAX_PREFIX_LENGTH:
            raise UserError(
                f"byte {offset}: prefix length {prefix} is over {MAX_PREFIX_LENGTH}; "
                "this is not an RFC 3442 classless-route option"
            )
        width = significant_octets(prefix)
        end = offset + 1 + width + IPV4_OCTETS
        if end > len(data):
            raise UserError(
                f"byte {offset}: a /{prefix} route needs {end - offset} bytes, "
                f"only {len(data) - offset} left; the option is truncated"
            )
        dest_octets = data[offset + 1 : offset + 1 + width].ljust(IPV4_OCTETS, b"\0")
        gateway = IPv4Address(data[end - IPV4_OCTETS : end])
        destination = IPv4Address(dest_octets)
        try:
            network = IPv4Network(f"{destination}/{prefix}")
        except ValueError:
            raise UserError(
                f"byte {offset}: {destination}/{prefix} has host bits set beyond its prefix"
            ) from None
        routes.append(Route(network, gateway))
        offset = end
    return routes


def check_route_set(routes: Sequence[Route]) -> None:
    """Refuse sets a client could not use: empty, duplicated, or over one option's size."""
    if not routes:
        raise UserError("no routes to encode: give at least one destination")
    seen: dict[IPv4Network, Route] = {}
    for route in routes:
        if route.destination in seen:
            raise UserError(
                f"duplicate destination {route.destination} "
                f"({seen[route.destination]} and {route}); a client would keep only one"
            )
        seen[route.destination] = route
    total = sum(encoded_length(r) for r in routes)
    if total > MAX_OPTION_LENGTH:
        raise UserError(
            f"{len(routes)} routes need {total} bytes, but one DHCP option holds at most "
            f"{MAX_OPTION_LENGTH}; send fewer or wider routes"
        )


def parse_address(text: str, what: str = "address") -> IPv4Address:
    """An IPv4 address from user input, or a UserError naming `what` was wrong."""
    try:
        return IPv4Address(text.strip())
    except AddressValueError:
        raise UserError(f"bad {what} {text!r}: expected an IPv4 address like 10.0.0.1") from None


def parse_network(text: str) -> IPv4Network:
    """A destination `A.B.C.D/LEN` (a bare address means /32); host bits must be clear."""
    text = text.strip()
    try:
        return IPv4Network(text, strict=True)
    except ValueError as exc:
        if isinstance(exc, (AddressValueError, NetmaskValueError)):
            raise UserError(f"bad CIDR {text!r}: expected A.B.C.D/LEN with LEN 0..32") from None
        loose = IPv4Network(text, strict=False)
        raise UserError(
            f"bad CIDR {text!r}: host bits set; the network is {loose}"
        ) from None


def parse_route(spec: str, default_gateway: IPv4Address = ON_LINK) -> Route:
    """`CIDR[,via]` -> Route; without `via` the route uses `default_gateway`."""
    destination, sep, via = spec.partition(",")
    gateway = parse_address(via, "next hop") if sep else default_gateway
    return Route(parse_network(destination), gateway)


def parse_hex(text: str) -> bytes:
    """Option bytes from hex as servers and sniffers print it (colons, spaces, 0x)."""
    cleaned = _HEX_SEPARATORS.sub("", text.strip())
    if cleaned.lower().startswith("0x"):
        cleaned = cleaned[2:]
    try:
        return bytes.fromhex(cleaned)
    except ValueError:
        raise UserError(
            f"bad hex {text!r}: expected pairs of hex digits, e.g. 20a9fea9fe00000000"
        ) from None


def build_routes(
    metadata_via: IPv4Address = ON_LINK,
    extra: Iterable[Route] = (),
    router: IPv4Address | None = None,
) -> list[Route]:
    """The metadata route, then `extra`, then a default route via `router` if given.

    The default route matters: RFC 3442 clients ignore option 3 (router) whenever
    option 121 is present, so without it they would lose their default gateway.
    """
    routes = [Route(METADATA_NETWORK, metadata_via), *extra]
    if router is not None:
        routes.append(Route(DEFAULT_NETWORK, router))
    return routes
