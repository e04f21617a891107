"""The request-target table (path_table.TABLE) in process: Dispatcher, then MetadataProtocol.

Every row's expected answer cites AWS's or nova's documented behaviour (see path_table).
"""

from __future__ import annotations

import pytest

from tests.responder import path_table
from tests.responder.fakes import FakeClient, one, request
from transparent_md.identity import Guest
from transparent_md.responder import paths
from transparent_md.responder.dispatch import Dispatcher
from transparent_md.responder.prepared import prepared_for
from transparent_md.responder.state import ResponderState
from transparent_md.responder.tokens import TokenAuthority
from transparent_md.store import open_store, parse_record

GUEST = Guest(bridge="br0", port="tap0", ifindex=10, mac=path_table.MAC, ip=path_table.IP)
PEER = "100.64.0.1"


@pytest.fixture
def store(tmp_path):
    store = open_store(str(tmp_path / "instances.db"))
    store.put_many([parse_record(path_table.RECORD)])
    yield store
    store.close()


@pytest.fixture
def dispatcher(store):
    return Dispatcher(store, TokenAuthority())


def prepared(store):
    return prepared_for(store.entry_for(GUEST), GUEST)


@pytest.mark.parametrize(("target", "status", "body"), path_table.TABLE,
                         ids=[row[0] for row in path_table.TABLE])
def test_dispatcher_answers_the_table(dispatcher, store, target, status, body):
    reply, _ = dispatcher.respond(prepared(store), b"GET", target.encode(), None, None,
                                  False, b"")
    assert reply.status == status
    if body is not None:
        assert reply.body == body


@pytest.mark.parametrize(("target", "status", "body"), path_table.TABLE,
                         ids=[row[0] for row in path_table.TABLE])
def test_protocol_answers_the_table(store, target, status, body):
    """The same rows as bytes on a connection: httptools hands us the target unchanged."""
    state = ResponderState(store, {PEER: GUEST}.get, 1)
    client = FakeClient(state, PEER)
    response = one(client.send(request(target)))
    assert response.status == status
    if body is not None:
        assert response.body == body


def test_token_put_and_password_match_canonical_paths_too(dispatcher, store):
    prep = prepared(store)
    for target in (b"//latest/api/token", b"http://169.254.169.254/latest/api/token/"):
        reply, is_token = dispatcher.respond(prep, b"PUT", target, None, b"60", False, b"")
        assert (reply.status, is_token) == (200, True)
        token = reply.body
        reply, _ = dispatcher.respond(prep, b"GET", b"//latest/meta-data/mac", token, None,
                                      False, b"")
        assert reply.body == path_table.MAC.encode()
    reply, _ = dispatcher.respond(prep, b"POST", b"//openstack//latest/password/", None, None,
                                  False, b"hunter2")
    assert reply.status == 200
    for target in (b"/openstack/latest/password", b"http://h//openstack/latest/password/"):
        reply, _ = dispatcher.respond(prep, b"GET", target, None, None, False, b"")
        assert reply.body == b"hunter2"


def test_each_new_url_is_put_in_canonical_form_once(dispatcher, store, monkeypatch):
    calls: list[bytes] = []
    real = paths.canonical_path

    def counting(target: bytes) -> bytes | None:
        calls.append(target)
        return real(target)

    monkeypatch.setattr(paths, "canonical_path", counting)
    prep = prepared(store)
    for _ in range(5):
        for target in (b"//latest/meta-data/instance-id", b"/latest/meta-data/instance-id"):
            reply, _ = dispatcher.respond(prep, b"GET", target, None, None, False, b"")
            assert reply.body == b"i-0123456789abcdef0"
    assert calls == [b"//latest/meta-data/instance-id", b"/latest/meta-data/instance-id"]
