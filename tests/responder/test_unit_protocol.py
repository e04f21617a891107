"""MetadataProtocol's state machine over a fake transport: no sockets, no root."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.responder.fakes import (
    UNKNOWN_PEER,
    FakeClient,
    make_state,
    one,
    parse_responses,
    request,
)
from transparent_md.responder import http
from transparent_md.responder.limits import ResponderLimits

ID = "/latest/meta-data/instance-id"


@pytest.fixture
def state(store):
    return make_state(store)


def test_get_answers_and_keeps_the_connection(state):
    client = FakeClient(state)
    for _ in range(3):
        reply = one(client.send(request(ID)))
        assert (reply.status, reply.body) == (200, b"i-aaaa")
        assert "connection" not in reply.headers
    assert not client.transport.closed
    assert state.stats.responses[200] == 3


def test_pipelined_requests_in_one_read_are_answered_in_order(state):
    client = FakeClient(state)
    paths = [ID, "/latest/meta-data/hostname", "/nope", ID]
    replies = parse_responses(client.send(b"".join(request(p) for p in paths)))
    assert [(r.status, r.body) for r in replies] == [
        (200, b"i-aaaa"), (200, b"alpha"), (404, b"Not Found"), (200, b"i-aaaa")]


def test_a_request_split_into_single_bytes_is_answered_once_complete(state):
    client = FakeClient(state)
    data = request(ID)
    for byte in data[:-1]:
        assert client.send(bytes([byte])) == b""
    assert one(client.send(data[-1:])).body == b"i-aaaa"


def test_head_has_the_length_but_no_body(state):
    client = FakeClient(state)
    reply = one(client.send(request(ID, "HEAD")), head_only=True)
    assert reply.status == 200
    assert reply.headers["content-length"] == "6"
    assert one(client.send(request(ID))).body == b"i-aaaa"  # the stream is still in sync


def test_http10_closes_unless_asked_to_keep_alive(state):
    client = FakeClient(state)
    reply = one(client.send(request(ID, version="HTTP/1.0")))
    assert reply.headers["connection"] == "close"
    assert client.transport.closed
    client = FakeClient(state)
    reply = one(client.send(request(ID, headers={"Connection": "keep-alive"},
                                    version="HTTP/1.0")))
    assert reply.headers["connection"] == "keep-alive"
    assert not client.transport.closed


def test_connection_close_is_honoured(state):
    client = FakeClient(state)
    assert one(client.send(request(ID, headers={"Connection": "close"}))).headers[
        "connection"] == "close"
    assert client.lost


def test_unknown_guest_gets_404_everywhere(state):
    client = FakeClient(state, UNKNOWN_PEER)
    assert one(client.send(request(ID))).status == 404
    assert one(client.send(request("/openstack/latest/meta_data.json"))).status == 404
    assert state.stats.connections_unknown_guest == 1


def _assert_error_then_linger(client: FakeClient, data: bytes, status: int) -> None:
    """The error reply is written, our side shut down, the connection not yet closed."""
    reply = one(client.send(data))
    assert reply.status == status
    assert reply.headers["connection"] == "close"
    assert client.transport.eof_sent
    assert not client.transport.closed
    assert client.send(request(ID)) == b""  # input after the error is read and dropped
    client.client_eof()
    assert client.lost


@pytest.mark.parametrize(("data", "status"), [
    (b"GET / HTTP/1.1\r\nHost\r\n\r\n", 400),
    (b"BREW /pot HTTP/1.1\r\n\r\n", 405),
    (request("/" + "a" * 5000), 414),
    (request(ID, headers={f"X-Pad-{i}": "v" * 100 for i in range(1000)}), 431),
    (request("/openstack/latest/password", "POST", body=b"x" * (1 << 20)), 413),
])
def test_errors_answer_their_status_then_linger(state, data, status):
    _assert_error_then_linger(FakeClient(state), data, status)
    assert state.stats.responses[status] == 1


def test_header_total_over_the_limit_is_431_even_across_reads(state):
    client = FakeClient(state)
    client.send(b"GET / HTTP/1.1\r\n")
    out = b""
    for i in range(200):
        out += client.send(b"X-Pad-%d: %s\r\n" % (i, b"v" * 100))
        if out:
            break
    assert one(out).status == 431


def test_lingering_ends_after_its_byte_budget(store):
    state = make_state(store, ResponderLimits(linger_bytes=1000))
    client = FakeClient(state)
    assert one(client.send(b"GET / HTTP/1.1\r\nHost\r\n\r\n")).status == 400
    client.send(b"x" * 999)
    assert not client.transport.closed
    client.send(b"x")
    assert client.lost


def test_lingering_ends_after_its_time_budget(store):
    loop = asyncio.new_event_loop()
    try:
        state = make_state(store, ResponderLimits(linger_s=0.05), loop=loop)
        client = FakeClient(state)
        assert one(client.send(b"GET / HTTP/1.1\r\nHost\r\n\r\n")).status == 400
        assert not client.transport.closed
        loop.run_until_complete(asyncio.sleep(0.2))
        client.take()
        assert client.lost
    finally:
        loop.close()


def test_keepalive_requests_limit_ends_the_connection_after_the_last_reply(store):
    state = make_state(store, ResponderLimits(keepalive_requests=3))
    client = FakeClient(state)
    assert "connection" not in one(client.send(request(ID))).headers
    assert "connection" not in one(client.send(request(ID))).headers
    last = one(client.send(request(ID)))
    assert (last.status, last.body, last.headers["connection"]) == (200, b"i-aaaa", "close")
    assert client.lost
    assert state.stats.keepalive_limit_closed == 1


def test_keepalive_time_limit_ends_the_connection_at_its_next_reply(store):
    state = make_state(store, ResponderLimits(keepalive_time_s=20.0, header_timeout_s=10.0))
    client = FakeClient(state)
    assert "connection" not in one(client.send(request(ID))).headers
    for _ in range(state.keepalive_ticks - 1):
        state.sweep()
        assert "connection" not in one(client.send(request(ID))).headers  # not idle
    state.sweep()
    assert one(client.send(request(ID))).headers["connection"] == "close"
    assert client.lost


def test_a_head_not_complete_within_the_header_timeout_gets_408(state):
    client = FakeClient(state)
    client.send(b"GET /latest/meta-data/ HTTP/1.1\r\n")
    for _ in range(state.header_ticks - 1):
        state.sweep()
        client.send(b"X: y\r\n")  # a byte now and then does not extend the deadline
        assert not client.transport.eof_sent
    state.sweep()
    assert one(client.take()).status == 408
    assert client.transport.eof_sent
    assert state.stats.header_timeouts == 1


def test_a_connection_that_sent_nothing_is_closed_as_idle_not_408(state):
    client = FakeClient(state)
    for _ in range(state.idle_ticks):
        state.sweep()
    assert client.take() == b""
    assert client.lost
    assert state.stats.connections_idle_closed == 1
    assert state.stats.header_timeouts == 0


def test_requests_reset_the_idle_clock(state):
    client = FakeClient(state)
    for _ in range(state.idle_ticks * 3):
        state.sweep()
        assert one(client.send(request(ID))).status == 200
    assert not client.lost


def test_per_identity_cap_refuses_by_abort_and_frees_on_close(store):
    state = make_state(store, ResponderLimits(max_conns_per_identity=2))
    first, second = FakeClient(state), FakeClient(state)
    third = FakeClient(state)
    assert third.transport.aborted and third.lost
    assert state.stats.connections_refused["identity"] == 1
    assert state.stats.open_connections == 2
    assert one(second.send(request(ID))).status == 200
    first.close()
    fourth = FakeClient(state)
    assert not fourth.transport.closed
    assert one(fourth.send(request(ID))).status == 200


def test_per_port_cap_counts_every_identity_of_the_port(store):
    state = make_state(store, ResponderLimits(max_conns_per_identity=5, max_conns_per_port=3))
    clients = [FakeClient(state, "100.64.0.1") for _ in range(2)]
    clients.append(FakeClient(state, "100.64.0.2"))  # same port, second IP
    refused = FakeClient(state, "100.64.0.2")
    assert refused.transport.aborted
    assert state.stats.connections_refused["port"] == 1
    other_port = FakeClient(state, "100.64.0.3")  # another port is not affected
    assert not other_port.transport.closed


def test_unknown_guests_share_one_cap(store):
    state = make_state(store, ResponderLimits(max_conns_unknown=2))
    [FakeClient(state, UNKNOWN_PEER) for _ in range(2)]
    assert FakeClient(state, UNKNOWN_PEER).transport.aborted
    assert not FakeClient(state).transport.closed
    assert state.stats.connections_refused["unknown"] == 1


def test_over_the_request_rate_is_429_with_retry_after_then_close(store):
    state = make_state(store, ResponderLimits(request_rate=0.001, request_burst=3))
    client = FakeClient(state)
    replies = parse_responses(client.send(request(ID) * 4))
    assert [r.status for r in replies] == [200, 200, 200, 429]
    assert replies[-1].headers["retry-after"] == "1"
    assert replies[-1].headers["connection"] == "close"
    assert client.transport.eof_sent
    # the bucket belongs to the identity, not the connection
    again = FakeClient(state)
    assert one(again.send(request(ID))).status == 429
    assert state.stats.requests_throttled == 2
    # another identity has its own bucket
    assert one(FakeClient(state, "100.64.0.3").send(request("/"))).status != 429


FORGED_REQUESTS = [
    request(ID), request("/latest/user-data"),
    request("/latest/meta-data/iam/security-credentials/alpha-role"),
    request("/openstack/latest/meta_data.json"), request("/openstack/latest/user_data"),
    request("/latest/api/token", "PUT", {"X-aws-ec2-metadata-token-ttl-seconds": "60"}),
    request("/openstack/latest/password", "POST", body=b"pw"),
    request("/latest/meta-data/instance-id", "HEAD"),
]


@pytest.mark.parametrize("data", FORGED_REQUESTS)
def test_a_guest_whose_mac_is_locked_elsewhere_gets_404_everywhere(state, data):
    client = FakeClient(state, "100.64.0.9")
    reply = one(client.send(data), head_only=data.startswith(b"HEAD"))
    assert reply.status == 404
    assert b"i-aaaa" not in reply.body and b"alpha" not in reply.body
    assert state.stats.forgery_refused == 1
    # the victim is still served on its own port
    assert one(FakeClient(state).send(request(ID))).body == b"i-aaaa"


def test_forged_requests_are_logged_once_per_guest(state, caplog):
    client = FakeClient(state, "100.64.0.9")
    for _ in range(5):
        client.send(request(ID))
    lines = [r for r in caplog.records if "locked to another port" in r.getMessage()]
    assert len(lines) == 1
    assert "tap9" in lines[0].getMessage() and "52:54:00:00:00:0a" in lines[0].getMessage()


def test_token_put_then_guarded_get(state):
    client = FakeClient(state, "100.64.0.3")
    assert one(client.send(request("/latest/meta-data/hostname"))).status == 401
    token = one(client.send(request("/latest/api/token", "PUT",
                                    {"X-aws-ec2-metadata-token-ttl-seconds": "60"}))).body
    reply = one(client.send(request("/latest/meta-data/hostname",
                                    headers={"X-aws-ec2-metadata-token": token.decode()})))
    assert (reply.status, reply.body) == (200, b"strict")


def test_error_replies_are_prepared_with_their_headers():
    assert http.TOO_MANY_REQUESTS.keep_alive.startswith(b"HTTP/1.1 429 Too Many Requests")
    assert b"Retry-After: 1\r\n" in http.TOO_MANY_REQUESTS.keep_alive
    assert http.REQUEST_TIMEOUT.status == 408


def test_pipelined_requests_wait_unread_while_the_output_is_over_its_ceiling(store):
    """A peer that stops reading gets the ceiling's worth of replies and one more; the
    rest of its read waits unparsed, and is answered, in order, as it takes replies."""
    state = make_state(store, ResponderLimits(max_unsent_bytes=256))
    client = FakeClient(state)
    client.transport.stall(256)
    paths = [ID, "/latest/meta-data/hostname"] * 50
    client.protocol.data_received(b"".join(request(p) for p in paths))
    waiting = parse_responses(bytes(client.transport.unsent))
    assert 1 < len(waiting) < 5, len(waiting)
    assert len(client.transport.unsent) < 256 + 2 * 200
    assert not client.transport.reading
    client.transport.drain()
    replies = parse_responses(client.take())
    assert [r.body for r in replies] == [b"i-aaaa", b"alpha"] * 50
    assert client.transport.reading and not client.transport.closed


def test_output_left_unsent_for_the_send_timeout_resets_the_connection(store):
    state = make_state(store, ResponderLimits(max_unsent_bytes=256, send_timeout_s=1.0),
                       idle_timeout=30.0)
    client = FakeClient(state)
    client.transport.stall(256)
    client.protocol.data_received(request(ID) * 20)
    state.sweep()  # first sight of the waiting output: the timeout starts here
    for _ in range(state.send_ticks - 1):
        state.sweep()
    assert not client.transport.reset_sent
    state.sweep()
    assert client.transport.reset_sent and not client.transport.unsent
    assert state.stats.send_timeouts == 1


def test_a_closing_connection_with_output_left_is_reset_too(store):
    state = make_state(store, ResponderLimits(send_timeout_s=1.0), idle_timeout=30.0)
    client = FakeClient(state)
    client.transport.stall(1 << 20)
    last = request(ID, headers={"Connection": "close"})
    client.protocol.data_received(request(ID) * 3 + last)
    assert client.transport.closed and client.transport.unsent  # closing, still queued
    for _ in range(state.send_ticks + 1):
        state.sweep()
    assert client.transport.reset_sent
    assert state.stats.send_timeouts == 1


def test_output_that_drains_starts_the_send_timeout_again(store):
    state = make_state(store, ResponderLimits(max_unsent_bytes=256, send_timeout_s=1.0),
                       idle_timeout=30.0)
    client = FakeClient(state)
    client.transport.stall(256)
    client.protocol.data_received(request(ID) * 6)
    for _ in range(state.send_ticks):
        state.sweep()
    client.transport.drain()  # the peer took its replies: progress
    client.protocol.data_received(request(ID) * 6)
    for _ in range(state.send_ticks):
        state.sweep()
    assert not client.transport.reset_sent
    state.sweep()
    assert client.transport.reset_sent


TOKEN_PATH = "/latest/api/token"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"


def _no_traceback(caplog) -> None:
    assert not [r for r in caplog.records if r.exc_info], caplog.text
    assert "Traceback" not in caplog.text


def test_a_ttl_of_4301_digits_gets_400_and_no_traceback(state, caplog):
    caplog.set_level("DEBUG")
    client = FakeClient(state)
    for _ in range(3):
        reply = one(client.send(request(TOKEN_PATH, "PUT", {TTL_HEADER: "9" * 4301})))
        assert reply.status == 400
    _no_traceback(caplog)
    assert state.stats.responses[400] == 3


def test_an_unexpected_error_is_one_line_per_guest_not_a_traceback_per_request(
        state, caplog, monkeypatch):
    caplog.set_level("INFO")

    def broken(*_args):
        raise ValueError("a bug " + "x" * 10_000)
    monkeypatch.setattr(state.dispatcher, "get", broken)
    statuses = []
    for _ in range(20):
        client = FakeClient(state)
        statuses += [r.status for r in parse_responses(client.send(request(ID)))]
    assert statuses == [500] * 20
    lines = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(lines) == 1, caplog.text
    assert "ValueError: a bug" in lines[0].getMessage()
    assert len(lines[0].getMessage()) < 600
    _no_traceback(caplog)


# The headers the responder reads a value of come first: hypothesis shrinks towards them.
_HEADER_NAMES = st.sampled_from([
    TTL_HEADER, "X-aws-ec2-metadata-token", "X-Forwarded-For", "Connection",
    "Proxy-Connection", "Content-Type", "X-Anything"])
# Any byte a header value may carry (llhttp refuses control bytes; so may we).
_HEADER_VALUES = st.one_of(
    st.binary(max_size=64), st.text(alphabet="0123456789 -+.", max_size=6000).map(str.encode),
    st.integers(min_value=-10**30, max_value=10**30).map(lambda n: str(n).encode()),
    # Around int()'s limit on digits (4,300), below the header limit (8 KiB).
    st.integers(min_value=4000, max_value=8000).map(lambda n: b"7" * n),
).map(lambda v: v.replace(b"\r", b"").replace(b"\n", b""))


def _with_headers(method: str, path: str, headers: list[tuple[str, bytes]]) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 169.254.169.254".encode()
    for name, value in headers:
        head += b"\r\n" + name.encode() + b": " + value
    length = b"\r\nContent-Length: 0" if method in ("PUT", "POST") else b""
    return head + length + b"\r\n\r\n"


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(headers=st.lists(st.tuples(_HEADER_NAMES, _HEADER_VALUES), min_size=1, max_size=3))
def test_fuzzed_header_values_never_reach_a_traceback_or_a_500(state, caplog, headers):
    """The same headers on a token PUT, a GET, a password POST and a HEAD, pipelined."""
    caplog.clear()
    client = FakeClient(state)
    requests = [_with_headers(method, path, headers) for method, path in (
        ("PUT", TOKEN_PATH), ("GET", ID), ("POST", "/openstack/latest/password"),
        ("HEAD", "/"))]
    try:
        out = client.send(b"".join(requests))
    finally:
        client.close()
    statuses = [int(line.split()[1]) for line in out.split(b"\r\n")
                if line.startswith(b"HTTP/1.1 ")]
    assert statuses and all(s < 500 for s in statuses), out[:300]
    _no_traceback(caplog)
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text
