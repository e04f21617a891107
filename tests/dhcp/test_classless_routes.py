"""RFC 3442 encoder/decoder: round trips, the RFC's own examples, and clear errors."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transparent_md.dhcp.classless_routes import (
    MAX_OPTION_LENGTH,
    ON_LINK,
    Route,
    build_routes,
    decode,
    encode,
    parse_hex,
    parse_network,
    parse_route,
)
from transparent_md.errors import UserError

ROUTER = IPv4Address("10.0.0.1")
# No timing in tests: a slow machine is not a failure.
no_deadline = settings(deadline=None)

# RFC 3442 section 3, "Destination descriptor" table: (subnet, descriptor octets).
RFC3442_DESCRIPTORS = [
    ("0.0.0.0/0", [0]),
    ("10.0.0.0/8", [8, 10]),
    ("10.0.0.0/24", [24, 10, 0, 0]),
    ("10.17.0.0/16", [16, 10, 17]),
    ("10.27.129.0/24", [24, 10, 27, 129]),
    ("10.229.0.128/25", [25, 10, 229, 0, 128]),
    ("10.198.122.47/32", [32, 10, 198, 122, 47]),
]


@st.composite
def routes_strategy(draw: st.DrawFn) -> Route:
    prefix = draw(st.integers(0, 32))
    address = draw(st.integers(0, 2**32 - 1))
    network = IPv4Network((address, prefix), strict=False)
    gateway = IPv4Address(draw(st.integers(0, 2**32 - 1)))
    return Route(network, gateway)


def fits_one_option(routes: list[Route]) -> bool:
    return len(encode_unchecked(routes)) <= MAX_OPTION_LENGTH


def encode_unchecked(routes: list[Route]) -> bytes:
    """Independent reference: octets that hold any prefix bit, written out by hand."""
    out = bytearray()
    for r in routes:
        p = r.destination.prefixlen
        octets_with_prefix_bits = [i for i in range(4) if i * 8 < p]
        out.append(p)
        out += bytes(r.destination.network_address.packed[i] for i in octets_with_prefix_bits)
        out += r.gateway.packed
    return bytes(out)


route_sets = st.lists(
    routes_strategy(), min_size=1, max_size=30, unique_by=lambda r: r.destination
).filter(fits_one_option)


@no_deadline
@given(route_sets)
def test_round_trip_any_route_set(routes: list[Route]) -> None:
    assert decode(encode(routes)) == routes


@no_deadline
@given(route_sets)
def test_encoding_matches_reference(routes: list[Route]) -> None:
    assert encode(routes) == encode_unchecked(routes)


@pytest.mark.parametrize(("subnet", "descriptor"), RFC3442_DESCRIPTORS)
def test_rfc3442_examples_byte_for_byte(subnet: str, descriptor: list[int]) -> None:
    route = Route(IPv4Network(subnet), ROUTER)
    expected = bytes(descriptor) + bytes([10, 0, 0, 1])
    assert encode([route]) == expected
    assert decode(expected) == [route]


def test_rfc3442_examples_concatenate_in_order() -> None:
    routes = [Route(IPv4Network(s), ROUTER) for s, _ in RFC3442_DESCRIPTORS]
    expected = b"".join(bytes(d) + ROUTER.packed for _, d in RFC3442_DESCRIPTORS)
    assert encode(routes) == expected
    assert decode(expected) == routes


@pytest.mark.parametrize("prefix", range(33))
def test_significant_octets_for_every_prefix(prefix: int) -> None:
    # All-ones network: every octet that holds a prefix bit is non-zero, so a wrong
    # octet count shows up as a wrong length and wrong bytes.
    network = IPv4Network(("255.255.255.255", prefix), strict=False)
    encoded = encode([Route(network, ON_LINK)])
    significant = (prefix + 7) // 8
    assert len(encoded) == 1 + significant + 4
    assert encoded[0] == prefix
    assert encoded[1 : 1 + significant] == network.network_address.packed[:significant]
    assert encoded[1 + significant :] == bytes(4)


@no_deadline
@given(route_sets, st.data())
def test_truncated_option_is_refused(routes: list[Route], data: st.DataObject) -> None:
    encoded = encode(routes)
    boundaries = {len(encode(routes[:i])) for i in range(1, len(routes) + 1)}
    # Every route takes at least 5 bytes, so cuts between two boundaries always exist.
    cut = data.draw(st.integers(1, len(encoded) - 1).filter(lambda c: c not in boundaries))
    with pytest.raises(UserError, match="truncated"):
        decode(encoded[:cut])


@no_deadline
@given(st.integers(33, 255), st.binary(min_size=8, max_size=8))
def test_prefix_over_32_is_refused(prefix: int, rest: bytes) -> None:
    with pytest.raises(UserError, match="over 32"):
        decode(bytes([prefix]) + rest)


def test_host_bits_in_option_are_refused() -> None:
    # /25 whose last significant octet has a bit below the prefix (10.229.0.129).
    with pytest.raises(UserError, match="host bits"):
        decode(bytes([25, 10, 229, 0, 129, 0, 0, 0, 0]))


def test_empty_option_is_refused() -> None:
    with pytest.raises(UserError, match="empty"):
        decode(b"")
    with pytest.raises(UserError, match="no routes"):
        encode([])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10.0.0.1/24", "host bits set; the network is 10.0.0.0/24"),
        ("10.0.0.0/33", "bad CIDR"),
        ("10.0.0/8", "bad CIDR"),
        ("nonsense", "bad CIDR"),
        ("", "bad CIDR"),
    ],
)
def test_bad_cidrs_are_refused(text: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        parse_network(text)


def test_route_spec_parsing() -> None:
    assert parse_route("10.9.0.0/16,10.0.0.2") == Route(
        IPv4Network("10.9.0.0/16"), IPv4Address("10.0.0.2")
    )
    assert parse_route("169.254.169.254").gateway == ON_LINK
    assert parse_route("169.254.169.254").destination.prefixlen == 32
    with pytest.raises(UserError, match="next hop"):
        parse_route("10.9.0.0/16,10.0.0")


def test_duplicate_destinations_are_refused() -> None:
    routes = build_routes(extra=[parse_route("169.254.169.254/32,10.0.0.9")])
    with pytest.raises(UserError, match="duplicate destination 169.254.169.254/32"):
        encode(routes)


@no_deadline
@given(st.integers(1, 40))
def test_option_size_limit(count: int) -> None:
    routes = [Route(IPv4Network((i, 32)), ROUTER) for i in range(count)]
    size = len(encode_unchecked(routes))
    if size <= MAX_OPTION_LENGTH:
        assert len(encode(routes)) == size
    else:
        with pytest.raises(UserError, match=f"at most {MAX_OPTION_LENGTH}"):
            encode(routes)


def test_router_adds_default_route_last() -> None:
    routes = build_routes(router=ROUTER)
    assert routes[-1] == Route(IPv4Network("0.0.0.0/0"), ROUTER)
    assert routes[0].destination == IPv4Network("169.254.169.254/32")


@pytest.mark.parametrize(
    "text",
    ["20a9fea9fe00000000", "20:a9:fe:a9:fe:00:00:00:00", "0x20A9FEA9FE00000000",
     "20 a9 fe a9 fe 00 00 00 00"],
)
def test_hex_spellings(text: str) -> None:
    assert decode(parse_hex(text)) == build_routes()


def test_bad_hex_is_refused() -> None:
    with pytest.raises(UserError, match="bad hex"):
        parse_hex("20a9fg")
