"""Dispatcher and TokenAuthority in process: request in, Reply out."""

from __future__ import annotations

import pytest

from tests.responder.fakes import GUEST, STRICT
from transparent_md.responder import http
from transparent_md.responder.dispatch import Dispatcher
from transparent_md.responder.prepared import prepared_for
from transparent_md.responder.tokens import MEMO_LIMIT, SECRET_BYTES, TokenAuthority

TTL = b"60"


@pytest.fixture
def dispatcher(store, clock):
    return Dispatcher(store, TokenAuthority(clock=clock))


def prepared(store, guest):
    return prepared_for(store.entry_for(guest), guest)


def get(dispatcher, prep, url: bytes, token: bytes | None = None) -> http.Reply:
    reply, is_token = dispatcher.respond(prep, b"GET", url, token, None, False, b"")
    assert not is_token
    return reply


def test_get_of_ec2_and_openstack_paths(dispatcher, store):
    prep = prepared(store, GUEST)
    assert get(dispatcher, prep, b"/latest/meta-data/instance-id").body == b"i-aaaa"
    assert get(dispatcher, prep, b"/latest/meta-data/hostname/").body == b"alpha"
    assert get(dispatcher, prep, b"/latest/user-data").body.startswith(b"#cloud-config")
    assert b'"hostname": "alpha"' in get(dispatcher, prep,
                                        b"/openstack/latest/meta_data.json").body
    assert get(dispatcher, prep, b"/nope").status == 404
    assert get(dispatcher, prep, b"/9999-01-01/meta-data/").status == 404


def test_unknown_guest_gets_404_for_every_method(dispatcher):
    for method, url in ((b"GET", b"/latest/meta-data/"), (b"HEAD", b"/"),
                        (b"POST", b"/openstack/latest/password")):
        reply, _ = dispatcher.respond(None, method, url, None, None, False, b"x")
        assert reply.status == 404
    reply, _ = dispatcher.respond(None, b"PUT", b"/latest/api/token", None, TTL, False, b"")
    assert reply.status == 404


def test_methods_a_path_does_not_allow_are_405(dispatcher, store):
    prep = prepared(store, GUEST)
    assert dispatcher.respond(prep, b"PUT", b"/latest/meta-data/", None, TTL, False,
                              b"")[0].status == 405
    assert get(dispatcher, prep, b"/latest/api/token").status == 405
    assert dispatcher.respond(prep, b"DELETE", b"/", None, None, False, b"")[0].status == 405


def test_token_put_rules(dispatcher, store):
    prep = prepared(store, GUEST)
    reply, is_token = dispatcher.respond(prep, b"PUT", b"/latest/api/token", None, TTL,
                                         False, b"")
    assert reply.status == 200 and is_token
    assert b"X-Aws-Ec2-Metadata-Token-Ttl-Seconds: 60" in reply.head
    forwarded, _ = dispatcher.respond(prep, b"PUT", b"/latest/api/token", None, TTL, True, b"")
    assert forwarded.status == 403
    for bad in (None, b"0", b"21601", b"abc"):
        reply, _ = dispatcher.respond(prep, b"PUT", b"/latest/api/token", None, bad, False, b"")
        assert reply.status == 400


def test_imdsv2_required_needs_a_valid_token(dispatcher, store, clock):
    prep = prepared(store, STRICT)
    assert get(dispatcher, prep, b"/latest/meta-data/hostname").status == 401
    token = dispatcher.respond(prep, b"PUT", b"/latest/api/token", None, TTL, False,
                               b"")[0].body
    assert get(dispatcher, prep, b"/latest/meta-data/hostname", token).body == b"strict"
    assert get(dispatcher, prep, b"/latest/meta-data/hostname", b"bogus").status == 401
    clock.now += 61
    assert get(dispatcher, prep, b"/latest/meta-data/hostname", token).status == 401


def test_a_token_of_one_instance_is_refused_for_another(dispatcher, store):
    strict = prepared(store, STRICT)
    token = dispatcher.respond(prepared(store, GUEST), b"PUT", b"/latest/api/token", None,
                               TTL, False, b"")[0].body
    assert get(dispatcher, strict, b"/latest/meta-data/hostname", token).status == 401


def test_password_is_set_once(dispatcher, store):
    prep = prepared(store, GUEST)
    url = b"/openstack/latest/password"
    assert get(dispatcher, prep, url).body == b""
    assert dispatcher.respond(prep, b"POST", url, None, None, False, b"pw1")[0].status == 200
    assert dispatcher.respond(prep, b"POST", url, None, None, False, b"pw2")[0].status == 409
    assert get(dispatcher, prep, url).body == b"pw1"
    assert dispatcher.respond(prep, b"POST", url, None, None, False,
                              b"\xff")[0].status in (400, 409)


def test_token_authority_issue_verify_expire(clock):
    tokens = TokenAuthority(clock=clock)
    token = tokens.issue("i-1", 10)
    assert tokens.is_valid(token, "i-1")
    assert tokens.is_valid(token, "i-1")  # memoised
    assert not tokens.is_valid(token, "i-2")
    clock.now += 10
    assert not tokens.is_valid(token, "i-1")


def test_token_authority_refuses_garbage_and_foreign_secrets(clock):
    tokens = TokenAuthority(clock=clock)
    other = TokenAuthority(clock=clock)
    assert not tokens.is_valid(other.issue("i-1", 10), "i-1")
    for junk in (b"", b"!!!", b"AAAA", tokens.issue("i-1", 10)[:-4]):
        assert not tokens.is_valid(junk, "i-1")


def test_token_authority_shared_secret_and_bounded_memo(clock):
    secret = b"s" * SECRET_BYTES
    one, two = TokenAuthority(clock=clock, secret=secret), TokenAuthority(clock=clock,
                                                                          secret=secret)
    assert two.is_valid(one.issue("i-1", 10), "i-1")
    with pytest.raises(ValueError):
        TokenAuthority(secret=b"short")
    for i in range(MEMO_LIMIT + 10):
        assert one.is_valid(one.issue(f"i-{i}", 10), f"i-{i}")
    assert one.memo_size() <= MEMO_LIMIT


def test_parse_ttl_bounds():
    assert TokenAuthority.parse_ttl(b"1") == 1
    assert TokenAuthority.parse_ttl(b"21600") == 21600
    assert TokenAuthority.parse_ttl(b" 5 ") == 5
    assert TokenAuthority.parse_ttl(b"-1") is None
    assert TokenAuthority.parse_ttl(b"0" * 5000 + b"60") == 60


def test_a_ttl_of_thousands_of_digits_is_refused_before_it_is_converted():
    # int() refuses more than 4,300 digits with a ValueError: the length goes first.
    for digits in (4301, 100_000):
        assert TokenAuthority.parse_ttl(b"9" * digits) is None
    assert TokenAuthority.parse_ttl(b"216000") is None


def test_a_token_of_another_length_is_refused_before_it_is_decoded():
    authority = TokenAuthority()
    token = authority.issue("i-1", 60)
    assert authority.is_valid(token, "i-1")
    for bad in (token + b"=", token[:-1], b"A" * 8000, b""):
        assert not authority.is_valid(bad, "i-1")
