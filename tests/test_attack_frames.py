"""The attack tools' frame builders: what they write is what scapy reads back."""

from __future__ import annotations

import argparse

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether

from transparent_md.lab.attacks import arpclaim, frames

MAC, OTHER = "02:00:00:00:00:05", "02:00:00:00:00:06"


def test_tags_go_after_the_macs_outermost_first():
    syn = frames.tcp_frame(src_mac=MAC, dst_mac=OTHER, src_ip="10.0.0.5",
                           dst_ip="169.254.169.254", sport=41000, dport=80,
                           flags=frames.SYN, seq=1)
    pkt = Ether(frames.tagged(syn, [(frames.ETH_P_8021AD, 5), (frames.ETH_P_8021Q, 0)]))
    assert (pkt.src, pkt.dst, pkt.type) == (MAC, OTHER, frames.ETH_P_8021AD)
    assert pkt[Dot1AD].vlan == 5 and pkt[Dot1Q].vlan == 0
    assert pkt[IP].dst == "169.254.169.254" and pkt[TCP].flags == "S"
    assert frames.tagged(syn, []) == syn


def test_arp_carries_the_hardware_type_asked_for():
    raw = frames.arp_frame(op=frames.ARP_REPLY, src_mac=MAC, dst_mac=OTHER, sender_mac=MAC,
                           sender_ip="10.0.0.1", target_mac=OTHER, target_ip="10.0.0.6",
                           hardware=frames.ARPHRD_IEEE802)
    arp = Ether(raw)[ARP]
    assert (arp.hwtype, arp.hwlen, arp.op, arp.psrc) == (6, 6, 2, "10.0.0.1")


def test_arpclaim_wraps_every_claim():
    out = arpclaim.frames_for("169.254.169.254", MAC, OTHER, "10.0.0.6",
                              tags=[(frames.ETH_P_8021Q, 0)])
    assert len(out) == 2
    assert all(Ether(f)[Dot1Q].vlan == 0 and Ether(f)[ARP].psrc == "169.254.169.254"
               for f in out)


@pytest.mark.parametrize(("text", "tag"), [
    ("0", (0x8100, 0)), ("4095", (0x8100, 4095)), ("88a8:5", (0x88A8, 5)),
    ("8100:7", (0x8100, 7)),
])
def test_vlan_tags_parse(text, tag):
    assert frames.parse_tag(text) == tag


@pytest.mark.parametrize("text", ["4096", "-1", "x", "9100:5", "88a8:", ""])
def test_bad_vlan_tags_are_a_one_line_usage_error(text, capsys):
    parser = argparse.ArgumentParser(prog="tool")
    frames.add_vlan_option(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--vlan", text])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("tool: error: argument --vlan: VLAN tag"), err
