"""A port that disappears while it is being attached is skipped and leaves nothing."""

from __future__ import annotations

import ctypes

import pytest
from pyroute2 import IPRoute

from transparent_md.datapath import layout, programs, tc
from transparent_md.datapath.bpf_syscall import BpfMap
from transparent_md.datapath.ports import GatewayRule, PortAttacher, PortInfo

pytestmark = pytest.mark.netns

GHOST_IFINDEX = 0x7FFF_0001  # no device has it: the kernel answers ENODEV


@pytest.fixture()
def attacher(topology):
    ns = topology.add_ns("vanish")
    loaded = programs.load_programs()
    maps = {m: BpfMap(loaded.map_fd(m), owned=False) for m in (layout.MAP_PORTS, layout.MAP_ARP)}
    ipr = IPRoute(netns=ns)
    yield PortAttacher(["br0"], loaded.port_fd, maps[layout.MAP_PORTS], maps[layout.MAP_ARP],
                       [GatewayRule("br0", "10.0.0.1")], tc.FilterPosition()), ipr, maps
    ipr.close()
    loaded.bpf.cleanup()


def test_vanished_port_is_skipped_and_its_map_entries_removed(attacher):
    ports, ipr, maps = attacher
    ports._attach(ipr, PortInfo(GHOST_IFINDEX, "ghost", "br0"))
    assert ports.attached == {}
    assert not maps[layout.MAP_PORTS].lookup(ctypes.c_uint32(GHOST_IFINDEX), layout.Port())
    key = layout.ArpKey(GHOST_IFINDEX, layout.be32("10.0.0.1"))
    assert not maps[layout.MAP_ARP].lookup(key, ctypes.c_uint8())
