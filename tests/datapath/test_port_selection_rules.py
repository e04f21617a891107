"""Port selection rules, in process (no root): kinds, globs, exact bridges."""

from __future__ import annotations

from transparent_md.datapath.port_selection import PortSelection


def test_selection_rules_in_process():
    default = PortSelection(("br0",))
    assert default.wants_port("vnet3", "tun") and default.wants_port("veth9", "veth")
    assert not default.wants_port("eno1", None) and not default.wants_port("vx0", "vxlan")
    assert not default.wants_port("bond0", "bond")
    chosen = PortSelection(("br0",), include=("eno*",), exclude=("eno2",))
    assert chosen.wants_port("eno1", None) and not chosen.wants_port("eno2", None)
    assert not chosen.wants_port("vnet3", "tun")
    assert PortSelection(("fwbr*",)).bridge_matches("fwbr100i0")
    assert PortSelection(("fwbr*", "br0")).exact_bridges() == ["br0"]
