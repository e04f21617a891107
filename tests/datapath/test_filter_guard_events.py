"""The filter guard reads which ports changed from the kernel's own tc events.

A namespace of this run's topology gets a veth; `tc` commands there produce the
rtnetlink traffic-control messages the guard listens to, read from a socket bound in
that namespace, and parsed as the guard parses them.
"""

from __future__ import annotations

import socket
import time

import pytest
from pyroute2.netlink import NETLINK_ROUTE
from pyroute2.netlink.rtnl import RTMGRP_LINK

from tests.conftest import FOREIGN_FILTER
from transparent_md.datapath.filter_guard import RTMGRP_TC, SweepSlices, changed_ifindexes
from transparent_md.datapath.responder_side import entered_netns

pytestmark = pytest.mark.netns

READ_TIMEOUT_S = 5.0


def _events_in(ns: str, groups: int) -> socket.socket:
    with entered_netns(ns):
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        sock.bind((0, groups))
    sock.settimeout(0.2)
    return sock


def _changed_within(sock: socket.socket, want: int) -> set[int]:
    seen: set[int] = set()
    deadline = time.monotonic() + READ_TIMEOUT_S
    while want not in seen and time.monotonic() < deadline:
        try:
            seen |= changed_ifindexes(sock.recv(1 << 16))
        except TimeoutError:
            continue
    return seen


def _ifindex(topology, ns: str, dev: str) -> int:
    out = topology.sh(ns, ["cat", f"/sys/class/net/{dev}/ifindex"], check=True).stdout
    return int(out)


def test_qdisc_and_filter_changes_name_their_port(topology):
    ns = topology.add_ns("guard")
    topology.sh(ns, ["ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1"],
                check=True)
    v0 = _ifindex(topology, ns, "v0")
    with _events_in(ns, RTMGRP_TC) as events:
        topology.sh(ns, ["tc", "qdisc", "add", "dev", "v0", "clsact"], check=True)
        assert v0 in _changed_within(events, v0)
        topology.sh(ns, ["tc", "filter", "add", "dev", "v0", "ingress", *FOREIGN_FILTER],
                    check=True)
        assert v0 in _changed_within(events, v0)
        topology.sh(ns, ["tc", "filter", "del", "dev", "v0", "ingress", "prio", "1"],
                    check=True)
        assert v0 in _changed_within(events, v0)
        topology.sh(ns, ["tc", "qdisc", "del", "dev", "v0", "clsact"], check=True)
        assert v0 in _changed_within(events, v0)


def test_link_messages_name_nothing(topology):
    """Only tc messages count: a link event (the follower's business) is not a change."""
    ns = topology.add_ns("guardlink")
    with _events_in(ns, RTMGRP_LINK) as events:
        topology.sh(ns, ["ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1"],
                    check=True)
        raw = events.recv(1 << 16)
    assert raw and changed_ifindexes(raw) == set()


@pytest.mark.parametrize("buffer", [b"", b"\x00" * 3, b"\x10\x00\x00\x00\x2d\x00",
                                    b"\x00" * 16, b"\xff" * 64])
def test_truncated_or_garbage_buffers_name_nothing_and_never_raise(buffer):
    assert isinstance(changed_ifindexes(buffer), set)


def test_sweep_slices_cover_every_port_once_per_round_then_start_again():
    slices = SweepSlices(4)
    ports = set(range(1, 11))
    seen = [slices.next_slice(ports) for _ in range(4)]
    assert set().union(*seen) == ports
    assert sum(len(s) for s in seen) == len(ports)  # each once
    assert slices.next_slice(ports) <= ports  # a new round
    assert SweepSlices(60).next_slice({7}) == {7}
