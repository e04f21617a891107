"""The raw datapath's parser and pump against odd frames (no root, no namespaces).

Property: whatever a guest sends (cut short, jumbo, tagged once, twice or more, a
fragment, with IP options, random bytes), `frames.read_port_frame` returns a verdict
as designed and never raises, and the pump handling it neither raises nor stalls. A
request that is served comes out with its shadow source and checksums that verify.
"""

from __future__ import annotations

import socket
import time

import dpkt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether

from transparent_md.datapath import layout, tables
from transparent_md.datapath.layout import Drop
from transparent_md.datapath.raw import frames
from transparent_md.datapath.raw.admission import Admission
from transparent_md.datapath.raw.pump import Pump

MD = "169.254.169.254"
GUEST_MAC, GW_MAC = "02:00:00:00:00:05", "02:00:00:00:00:01"
SHADOW = socket.inet_aton("100.64.0.9")
RESPONDER_MAC = bytes.fromhex("0200000000aa")
# A frame that takes longer than this in the pump stalls the other guests' frames.
PUMP_FRAME_BUDGET_S = 0.05
JUMBO = 9000

sources = st.sampled_from(["10.0.0.5", "192.0.2.7", "0.0.0.0", "127.0.0.1", "224.0.0.1"])
flags = st.sampled_from(["S", "SA", "A", "PA", "R", "F", "FA", ""])
payloads = st.one_of(st.just(b""), st.binary(max_size=64), st.just(b"x" * JUMBO))
tag_stacks = st.lists(st.sampled_from(["q", "ad"]), max_size=4)


def tagged(stack: list[str]):
    layer = Ether(src=GUEST_MAC, dst=GW_MAC)
    for kind in stack:
        layer = layer / (Dot1Q(vlan=7) if kind == "q" else Dot1AD(vlan=9))
    return layer


@st.composite
def tcp_frames(draw):
    stack = draw(tag_stacks)
    options = draw(st.sampled_from([b"", b"\x01\x01\x01\x01"]))
    frag = draw(st.sampled_from([0, 0, 1, 185]))
    mf = draw(st.booleans())
    ip = IP(src=draw(sources), dst=draw(st.sampled_from([MD, MD, "10.0.0.1"])),
            frag=frag, flags="MF" if mf else 0, options=options)
    tcp = TCP(sport=40000, dport=draw(st.sampled_from([80, 80, 22])), flags=draw(flags))
    raw = bytes(tagged(stack) / ip / tcp / draw(payloads))
    cut = draw(st.one_of(st.none(), st.integers(min_value=0, max_value=len(raw))))
    return {"frame": raw if cut is None else raw[:cut], "tags": len(stack), "cut": cut,
            "ip": ip, "options": bool(options), "fragment": bool(frag or mf),
            "dport": tcp.dport, "flags": str(tcp.flags)}


def expected_untagged(case: dict) -> str:
    ip = case["ip"]
    if ip.dst != MD:
        return "none"
    if case["options"] or case["fragment"] or case["dport"] != 80:
        return "unserved"
    if ip.src in ("0.0.0.0", "127.0.0.1", "224.0.0.1"):
        return "bad_source"
    return "request"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tcp_frames())
def test_tcp_frames_get_the_designed_verdict(case):
    seen = frames.read_port_frame(case["frame"])
    if case["cut"] is not None:
        # Cut short: anything but a crash, and never a request with a cut TCP header.
        if isinstance(seen, frames.Request):
            assert len(case["frame"]) >= 14 + 4 * case["tags"] + 20 + 20
        return
    if case["tags"] > frames.MAX_TAGS:
        assert seen == frames.Refused(Drop.TOO_MANY_TAGS)
    elif case["tags"]:
        want = frames.Refused(Drop.TAGGED_METADATA) if case["ip"].dst == MD else None
        assert seen == want
    else:
        want = expected_untagged(case)
        if want == "none":
            assert seen is None
        elif want == "request":
            assert isinstance(seen, frames.Request)
            assert seen.opens == (case["flags"] == "S")
        else:
            assert seen == frames.Refused(Drop.UNSERVED if want == "unserved"
                                          else Drop.BAD_SOURCE)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000), st.booleans())
def test_random_bytes_never_raise(blob, nic_tag):
    frames.read_port_frame(blob, nic_tag)
    frames.read_reply(blob)


@settings(max_examples=100, deadline=None)
@given(payload=payloads, partial=st.booleans())
def test_a_served_request_is_rewritten_with_checksums_that_verify(payload, partial):
    frame = bytes(Ether(src=GUEST_MAC, dst=GW_MAC) / IP(src="10.0.0.5", dst=MD)
                  / TCP(sport=40000, dport=80, flags="S") / payload)
    request = frames.read_port_frame(frame)
    assert isinstance(request, frames.Request)
    out = dpkt.ethernet.Ethernet(frames.request_to_responder(request, SHADOW, RESPONDER_MAC,
                                                             partial))
    assert out.dst == RESPONDER_MAC and out.data.src == SHADOW
    assert len(out) == len(frame)
    ip, tcp = out.data, out.data.data
    claimed = (ip.sum, tcp.sum)
    ip.sum = tcp.sum = 0
    rebuilt = dpkt.ethernet.Ethernet(bytes(out))
    assert (rebuilt.data.sum, rebuilt.data.data.sum) == claimed


@settings(max_examples=50, deadline=None)
@given(sender=st.sampled_from(["10.0.0.5", MD, "0.0.0.0"]),
       target=st.sampled_from([MD, "10.0.0.1", "10.0.0.9"]), op=st.sampled_from([1, 2]),
       stack=st.lists(st.just("q"), max_size=3))
def test_arp_is_read_as_designed(sender, target, op, stack):
    seen = frames.read_port_frame(bytes(tagged(stack) / ARP(op=op, psrc=sender, pdst=target,
                                                              hwsrc=GUEST_MAC)))
    if len(stack) > frames.MAX_TAGS:
        assert seen == frames.Refused(Drop.TOO_MANY_TAGS)
    else:
        assert isinstance(seen, frames.Arp) and seen.tagged == bool(stack)
        assert (seen.sender_ip, seen.target_ip) == (socket.inet_aton(sender),
                                                   socket.inet_aton(target))


# -- the pump, with real shared tables and datagram sockets standing in for links ------

@pytest.fixture(scope="module")
def pump(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tables")
    made = tables.create_raw_tables(directory)
    cfg = layout.Config(shadow_net=layout.be32("100.64.0.0"), shadow_mask=layout.be32(
        "255.192.0.0"), shadow_slots=1000, flags=layout.CFG_ANSWER_METADATA_ARP
        | layout.CFG_MAC_LOCK, port_identity_quota=4, port_mac_quota=2,
        syn_cost_ns=10_000_000, syn_burst_ns=200_000_000, slot_reuse_delay_ns=15 * 10**9)
    made[layout.MAP_CONFIG].update(layout.ctypes.c_uint32(0), cfg)
    pump = Pump(Admission(made), made[layout.MAP_ARP], "02:00:00:00:00:aa",
                "02:00:00:00:00:bb", answer_metadata_arp=True)
    responder_out, responder_in = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    port_out, port_in = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for sock in (responder_in, port_in, responder_out, port_out):
        sock.setblocking(False)
    pump._responder = responder_out
    yield pump, port_out, responder_in, port_in
    for sock in (responder_out, responder_in, port_out, port_in):
        sock.close()
    for table in made.values():
        table.close()


def drain(sock: socket.socket) -> int:
    count = 0
    while True:
        try:
            sock.recv(70000)
        except BlockingIOError:
            return count
        count += 1


@settings(max_examples=300, deadline=None, suppress_health_check=[
    HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=tcp_frames(), status=st.sampled_from([0, 0x8, 0x10]))
def test_the_pump_neither_raises_nor_stalls(pump, case, status):
    worker, port_out, responder_in, port_in = pump
    started = time.perf_counter()
    worker.on_port_frame(3, port_out, case["frame"], status)
    worker.on_reply(case["frame"], status)
    assert time.perf_counter() - started < PUMP_FRAME_BUDGET_S
    drain(responder_in)
    drain(port_in)


def test_the_pump_serves_a_syn_and_answers_arp(pump):
    worker, port_out, responder_in, port_in = pump
    syn = bytes(Ether(src="02:00:00:00:00:77", dst=GW_MAC) / IP(src="10.0.0.77", dst=MD)
                / TCP(sport=40000, dport=80, flags="S"))
    drain(responder_in)
    worker.on_port_frame(5, port_out, syn, 0)
    sent = dpkt.ethernet.Ethernet(responder_in.recv(70000))
    assert sent.data.src[:1] == b"\x64" and sent.dst == bytes.fromhex("0200000000aa")
    ask = bytes(Ether(src="02:00:00:00:00:77", dst="ff:ff:ff:ff:ff:ff")
                / ARP(op=1, psrc="10.0.0.77", pdst=MD, hwsrc="02:00:00:00:00:77"))
    drain(port_in)
    worker.on_port_frame(5, port_out, ask, 0)
    answer = dpkt.ethernet.Ethernet(port_in.recv(70000))
    assert answer.data.op == dpkt.arp.ARP_OP_REPLY and answer.data.spa == socket.inet_aton(MD)
