"""`run --gateway BRIDGE_OR_PORT=IP` takes IPv4 and IPv6 next hops; bad ones are one line."""

from __future__ import annotations

import argparse

import pytest

from transparent_md.cli.run import _gateway
from transparent_md.datapath.ports import GatewayRule


@pytest.mark.parametrize("value,rule", [
    ("br0=10.0.0.1", GatewayRule("br0", "10.0.0.1")),
    ("br0=FD00:0::1", GatewayRule("br0", "fd00::1")),
    ("tap3=fe80::1", GatewayRule("tap3", "fe80::1")),
])
def test_ipv4_and_ipv6_gateways_are_taken(value, rule):
    assert _gateway(value) == rule


@pytest.mark.parametrize("value,problem", [
    ("br0", "expected BRIDGE_OR_PORT=IP"),
    ("br0=fd00::zz", "does not appear to be an IPv4 or IPv6 address"),
    ("br0=ff02::1", "not a unicast address"),
    ("br0=::", "not a unicast address"),
    ("br0=127.0.0.1", "not a unicast address"),
])
def test_bad_gateways_are_refused_in_one_line(value, problem):
    with pytest.raises(argparse.ArgumentTypeError) as err:
        _gateway(value)
    assert problem in str(err.value) and "\n" not in str(err.value)
