"""HTTP behaviour: keep-alive, pipelining, HEAD, 1.0, limits, malformed input, idling."""

from __future__ import annotations

import re
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import wait_for
from tests.responder.conftest import UNTHROTTLED, start_responder
from tests.responder.http_client import Conn, exchange_raw

ID = "/latest/meta-data/instance-id"


def test_keep_alive_serves_many_requests_on_one_connection(live):
    conn = live.connect()
    for _ in range(50):
        response = conn.request("GET", ID)
        assert response.status == 200
        assert response.body == b"i-aaaa"
        assert "connection" not in response.headers
    conn.close()


def test_pipelined_requests_are_answered_in_order(live):
    conn = live.connect()
    paths = [ID, "/latest/meta-data/hostname", "/nope", "/latest/meta-data/local-ipv4"] * 5
    payload = b"".join(f"GET {p} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for p in paths)
    conn.sock.sendall(payload)
    bodies = [conn.read() for _ in paths]
    assert [b.body for b in bodies[:4]] == [b"i-aaaa", b"alpha", b"Not Found", b"10.0.0.5"]
    assert [b.status for b in bodies] == [200, 200, 404, 200] * 5
    conn.close()


def test_head_has_headers_but_no_body(live):
    conn = live.connect()
    head = conn.request("HEAD", ID)
    assert head.status == 200
    assert head.headers["content-length"] == "6"
    assert head.body == b""
    assert conn.request("GET", ID).body == b"i-aaaa"  # stream still in sync
    conn.close()


def test_http10_closes_unless_keep_alive(live):
    conn = live.connect()
    response = conn.request("GET", ID, version="HTTP/1.0")
    assert response.body == b"i-aaaa"
    assert response.headers["connection"] == "close"
    assert conn.at_eof()
    conn = live.connect()
    response = conn.request("GET", ID, {"Connection": "keep-alive"}, version="HTTP/1.0")
    assert response.headers["connection"] == "keep-alive"
    assert conn.request("GET", ID, {"Connection": "keep-alive"}, version="HTTP/1.0").status == 200
    conn.close()


def test_connection_close_is_honoured(live):
    conn = live.connect()
    assert conn.request("GET", ID, {"Connection": "close"}).headers["connection"] == "close"
    assert conn.at_eof()


@pytest.mark.parametrize("method", ["DELETE", "OPTIONS", "PATCH", "TRACE", "PROPFIND"])
def test_unknown_methods_are_405(live, method):
    conn = live.connect()
    assert conn.request(method, ID).status == 405
    conn.close()


def test_oversized_url_is_414(live):
    conn = live.connect()
    assert conn.request("GET", "/" + "a" * 5000).status == 414


def test_oversized_headers_are_431(live):
    conn = live.connect()
    headers = {f"X-Pad-{i}": "v" * 200 for i in range(60)}
    assert conn.request("GET", ID, headers).status == 431


def test_endless_header_line_is_cut_off(live):
    sock = live.socket()
    sock.sendall(b"GET / HTTP/1.1\r\nX-Long: ")
    reply = b""
    try:
        for _ in range(100):
            sock.sendall(b"v" * 4096)
    except (BrokenPipeError, ConnectionResetError):
        pass
    try:
        reply = sock.recv(65536)
    except ConnectionResetError:
        reply = b""
    assert reply == b"" or reply.startswith(b"HTTP/1.1 431")
    sock.close()


MALFORMED = [
    b"GET\r\n\r\n",
    b"GET / HTTP/9.9\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost\r\n\r\n",
    b"GET / HTTP/1.1\r\n: novalue\r\n\r\n",
    b"GET /\x00 HTTP/1.1\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello
    b"SSH-2.0-OpenSSH_9.2\r\n",
    b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
    b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    b"POST /openstack/latest/password HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
    b"G\xffT / HTTP/1.1\r\n\r\n",
    b"CONNECT 169.254.169.254:80 HTTP/1.1\r\n\r\n",
    b"\r\n\r\n\r\n\r\n",
    b"GET / HTTP/1.1\nHost: x\n\n\x00\x00",
]


def _statuses(reply: bytes) -> list[bytes]:
    return re.findall(rb"HTTP/1\.1 (\d{3}) ", reply)


def assert_only_4xx_or_closed(reply: bytes) -> None:
    """Every response in `reply` must be a 4xx; a silent close is fine too."""
    if not reply:
        return
    statuses = _statuses(reply)
    assert statuses, reply
    assert statuses[-1].startswith(b"4"), reply


@pytest.mark.parametrize("payload", MALFORMED)
def test_malformed_requests_get_4xx_or_close_and_server_keeps_serving(live, payload):
    bystander = live.connect()
    assert bystander.request("GET", ID).status == 200
    assert_only_4xx_or_closed(exchange_raw(live.socket(), payload))
    assert bystander.request("GET", ID).status == 200  # other connections undisturbed
    assert live.get(ID).status == 200  # and new ones are served
    bystander.close()


_TOKENS = st.sampled_from([b"GET", b"PUT", b"POST", b"HEAD", b"FOO", b" ", b"/", b"\r\n",
                           b"HTTP/1.1", b"HTTP/1.0", b":", b"Content-Length: ",
                           b"Transfer-Encoding: chunked", b"0", b"99999999999", b"\x00",
                           b"\xff", b"/latest/api/token", b"/openstack/latest/password",
                           b"X-aws-ec2-metadata-token-ttl-seconds: ", b"\r\n\r\n"])
_PAYLOADS = st.lists(st.one_of(_TOKENS, st.binary(max_size=40)), min_size=1,
                     max_size=25).map(b"".join)


@pytest.fixture(scope="module")
def shared_live(tmp_path_factory):
    # Hundreds of examples a second from one guest: the request rate limit aside.
    yield from start_responder(str(tmp_path_factory.mktemp("fuzz") / "instances.db"), 30.0,
                               limits=UNTHROTTLED)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=_PAYLOADS)
def test_generated_requests_never_break_the_responder(shared_live, payload):
    reply = exchange_raw(shared_live.socket(), payload)
    statuses = _statuses(reply)
    assert all(not s.startswith(b"5") for s in statuses), reply
    if statuses and not statuses[-1].startswith((b"2", b"404")):
        assert statuses[-1].startswith(b"4"), reply
    assert shared_live.get(ID).body == b"i-aaaa"


def test_idle_connections_are_closed(tmp_path):
    for live in start_responder(str(tmp_path / "i.db"), idle_timeout=0.2):
        conn = live.connect()
        assert conn.request("GET", ID).status == 200
        conn.sock.settimeout(30)  # bound only; the server closes after 0.2-0.3 s idle
        assert conn.sock.recv(1) == b""
        # The client may see the close before the serving thread counts it.
        stats = live.responder.stats
        assert wait_for(lambda: stats.connections_idle_closed >= 1, 30)  # noqa: B023
        assert live.get(ID).status == 200


def test_unfinished_request_is_closed_too(tmp_path):
    for live in start_responder(str(tmp_path / "i.db"), idle_timeout=0.2):
        sock = live.socket()
        sock.sendall(b"GET /latest/meta-data/ HTTP/1.1\r\nHost: x\r\n")
        sock.settimeout(30)
        assert sock.recv(1) == b""


def test_upgrade_is_ignored_and_the_connection_ends(live):
    reply = exchange_raw(live.socket(), b"GET /latest/meta-data/instance-id HTTP/1.1\r\n"
                         b"Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    assert _statuses(reply) == [b"200"]
    assert reply.endswith(b"i-aaaa")


def test_conn_helper_reads_eof():
    a, b = socket.socketpair()
    b.close()
    assert Conn(a).at_eof()
