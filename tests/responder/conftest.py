"""A live responder on 127.0.0.1 in a background uvloop thread.

The resolver maps the client's loopback source address (127.0.0.2, 127.0.0.3, ...)
to a Guest: a stand-in for the datapath, which later tests replace with the tc path.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import uvloop

from tests.keys import ED25519, RSA
from tests.responder.fakes import make_store
from tests.responder.http_client import Conn, Response
from transparent_md.identity import Guest
from transparent_md.responder import Responder
from transparent_md.responder.limits import ResponderLimits
from transparent_md.store import open_store, parse_record

GUEST_A = Guest(bridge="br0", port="tap0", ifindex=10, mac="52:54:00:00:00:0a", ip="10.0.0.5")
GUEST_B = Guest(bridge="br1", port="tap1", ifindex=11, mac="52:54:00:00:00:0b", ip="10.0.0.5")
GUEST_STRICT = Guest(bridge="br0", port="tap2", ifindex=12, mac="52:54:00:00:00:0c",
                     ip="10.0.0.7")
# Subprocess clients connect from 127.0.0.1: they are guest A too.
GUESTS = {"127.0.0.1": GUEST_A, "127.0.0.2": GUEST_A, "127.0.0.3": GUEST_B,
          "127.0.0.4": GUEST_STRICT}
UNKNOWN_SOURCE = "127.0.0.9"
# For clients that loop as fast as they can on one connection (no honest guest does):
# the request rate and keep-alive limits out of their way.
UNTHROTTLED = ResponderLimits(request_rate=1e9, request_burst=10**9,
                              keepalive_requests=10**9)

RECORD_A = {
    "instance_id": "i-aaaa", "mac": GUEST_A.mac, "ip": "10.0.0.5", "bridge": "br0",
    "hostname": "alpha", "availability_zone": "eu-west-1a", "instance_type": "m5.large",
    "public_ipv4": "203.0.113.10", "security_groups": ["default", "web"],
    "ssh_keys": {"alice": f"{ED25519} alice", "bob": f"{RSA} bob"},
    "user_data": "#cloud-config\nhostname: alpha\n",
    "vendor_data": {"cloud-init": "#cloud-config\n"},
    "openstack": {"project_id": "proj-a", "meta": {"role": "web"}},
    "iam": {"role": "alpha-role", "access_key_id": "ASIAALPHA", "secret_access_key": "s3cr3t",
            "token": "tok", "expiration": "2099-01-01T00:00:00Z"},
}
# Same IP as A on another bridge, no MAC: the bridge binding tells them apart.
RECORD_B = {"instance_id": "i-bbbb", "ip": "10.0.0.5", "bridge": "br1", "hostname": "beta",
            "availability_zone": "us-east-1c"}
RECORD_STRICT = {"instance_id": "i-strict", "mac": GUEST_STRICT.mac, "imdsv2_required": True,
                 "hostname": "strict"}


@dataclass
class Live:
    """A running responder and how to reach it."""

    port: int
    store_path: str
    responder: Responder
    loop: asyncio.AbstractEventLoop

    def socket(self, source: str = "127.0.0.2", timeout: float = 10.0) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout,
                                        source_address=(source, 0))

    def connect(self, source: str = "127.0.0.2") -> Conn:
        return Conn(self.socket(source))

    def get(self, path: str, source: str = "127.0.0.2",
            headers: dict[str, str] | None = None) -> Response:
        conn = self.connect(source)
        try:
            return conn.request("GET", path, headers)
        finally:
            conn.close()

    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _resolver(peer_ip: str) -> Guest | None:
    return GUESTS.get(peer_ip)


@pytest.fixture
def store(tmp_path):
    store = make_store(str(tmp_path / "instances.db"))
    yield store
    store.close()


@pytest.fixture
def live(tmp_path) -> Iterator[Live]:
    """A responder with the product's default limits."""
    yield from start_responder(str(tmp_path / "instances.db"), idle_timeout=30.0)


@pytest.fixture
def live_unthrottled(tmp_path) -> Iterator[Live]:
    yield from start_responder(str(tmp_path / "instances.db"), idle_timeout=30.0,
                               limits=UNTHROTTLED)


def start_responder(store_path: str, idle_timeout: float,
                    listener_sndbuf: int | None = None,
                    listener_rcvbuf: int | None = None,
                    limits: ResponderLimits | None = None,
                    resolver=None) -> Iterator[Live]:
    """Serve the three test records on 127.0.0.1 in a uvloop thread until closed."""
    store = open_store(store_path)
    store.put_many([parse_record(r) for r in (RECORD_A, RECORD_B, RECORD_STRICT)])
    responder = Responder(store, resolver or _resolver, idle_timeout=idle_timeout,
                          limits=limits)
    listener = socket.socket()
    if listener_sndbuf is not None:  # accepted sockets inherit it (and no autotuning)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, listener_sndbuf)
    if listener_rcvbuf is not None:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, listener_rcvbuf)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    loop = uvloop.new_event_loop()
    started = threading.Event()
    holder = {}

    def serve() -> None:
        asyncio.set_event_loop(loop)
        holder["server"] = loop.run_until_complete(responder.start(listener))
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    started.wait()
    try:
        yield Live(listener.getsockname()[1], store_path, responder, loop)
    finally:
        def stop() -> None:
            responder.close()
            holder["server"].close()
            loop.stop()
        loop.call_soon_threadsafe(stop)
        thread.join()
        loop.close()
        store.close()
