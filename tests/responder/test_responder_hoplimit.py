"""A token reply that has to wait in a buffer still leaves with IP TTL = hop limit.

The client pipelines large replies ahead of its token PUT and keeps a small receive
window, and the server socket has a small send buffer, so the token reply sits in the
transport's buffer and is sent by the kernel only later. Every captured segment that
carries any byte of it must have TTL 1; the reply to a later request gets a normal TTL.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.responder.conftest import RECORD_A, Live, start_responder
from tests.responder.http_client import Conn
from transparent_md.store import open_store, parse_record

TOKEN = "/latest/api/token"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
USER_DATA = "/latest/user-data"
ID = "/latest/meta-data/instance-id"
# Far more reply bytes than the server's send buffer plus the client's window, far
# fewer than the responder's queued-output limit (1 MiB).
USER_DATA_BYTES = 16000
PIPELINED = 12
SMALL_BUFFER = 4096
SNIFF_BUFFER = 32 << 20
SO_RCVBUFFORCE = 33  # SO_RCVBUF past rmem_max (needs CAP_NET_ADMIN); not in `socket`
TCP_SYN_ACK = 0x12
TCP_FIN = 0x01


@dataclass
class Segment:
    offset: int  # first payload byte, counted from the server's first data byte
    payload: bytes
    ttl: int


@pytest.fixture
def live_small_sndbuf(tmp_path) -> Iterator[Live]:
    yield from start_responder(str(tmp_path / "instances.db"), idle_timeout=30.0,
                      listener_sndbuf=SMALL_BUFFER)


@pytest.fixture
def sniffer() -> Iterator[socket.socket]:
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
    except PermissionError:
        pytest.skip("needs CAP_NET_RAW")
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, SNIFF_BUFFER)
    sock.bind(("lo", 0))
    sock.settimeout(5)
    yield sock
    sock.close()


def server_segments(sniffer: socket.socket, server_port: int,
                    client_port: int) -> list[Segment]:
    """Data segments server -> client captured so far, up to the server's FIN."""
    isn = None
    segments = []
    fin_seen = False
    while not fin_seen:
        packet = sniffer.recv(65535)  # lo may show a packet twice: harmless here
        if packet[9] != socket.IPPROTO_TCP:
            continue
        ihl = (packet[0] & 0x0F) * 4
        tcp = packet[ihl:]
        sport, dport = int.from_bytes(tcp[0:2], "big"), int.from_bytes(tcp[2:4], "big")
        if (sport, dport) != (server_port, client_port):
            continue
        seq, flags = int.from_bytes(tcp[4:8], "big"), tcp[13]
        if flags & TCP_SYN_ACK == TCP_SYN_ACK:
            isn = seq
            continue
        payload = tcp[(tcp[12] >> 4) * 4:]
        if payload and isn is not None:
            segments.append(Segment((seq - isn - 1) % (1 << 32), payload, packet[8]))
        fin_seen = bool(flags & TCP_FIN)
    return segments


def test_buffered_token_reply_still_leaves_with_ttl_1(live_small_sndbuf, sniffer):
    live = live_small_sndbuf
    store = open_store(live.store_path)
    store.update(parse_record({**RECORD_A, "user_data": "x" * USER_DATA_BYTES}))
    store.close()
    conn_sock = socket.socket()
    conn_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
    conn_sock.bind(("127.0.0.2", 0))  # guest A
    conn_sock.connect(("127.0.0.1", live.port))
    conn_sock.settimeout(10)
    client = Conn(conn_sock)

    # One send, so the responder reads it in one go and queues all replies at once.
    conn_sock.sendall(b"GET %s HTTP/1.1\r\nHost: md\r\n\r\n" % USER_DATA.encode() * PIPELINED
                      + b"PUT %s HTTP/1.1\r\nHost: md\r\n%s: 60\r\nContent-Length: 0\r\n\r\n"
                      % (TOKEN.encode(), TTL_HEADER.encode()))
    replies = [client.read() for _ in range(PIPELINED)]
    assert all(len(r.body) == USER_DATA_BYTES for r in replies)
    token = client.read().body
    assert token
    plain = client.request("GET", ID, {"Connection": "close"})
    assert plain.status == 200

    segments = server_segments(sniffer, live.port, conn_sock.getsockname()[1])
    conn_sock.close()
    stream = bytearray(max(s.offset + len(s.payload) for s in segments))
    for s in segments:
        stream[s.offset:s.offset + len(s.payload)] = s.payload
    token_at = stream.find(token)
    reply_start = stream.rfind(b"HTTP/1.1 200", 0, token_at)
    reply_end = token_at + len(token)
    covering = [s for s in segments
                if s.offset < reply_end and s.offset + len(s.payload) > reply_start]
    assert covering, "the token reply was not captured"
    assert {s.ttl for s in covering} == {1}
    assert segments[0].ttl > 1  # the first reply left before the token was asked for
    assert segments[-1].ttl > 1  # and the TTL came back once the token was delivered
