"""IMDSv2 token rules, one test each, over loopback."""

from __future__ import annotations

import socket
import time

import pytest

TOKEN = "/latest/api/token"
TTL = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
ID = "/latest/meta-data/instance-id"


def put_token(live, ttl: str | None = "60", source: str = "127.0.0.2", extra=None):
    conn = live.connect(source)
    headers = {TTL: ttl} if ttl is not None else {}
    headers.update(extra or {})
    try:
        return conn.request("PUT", TOKEN, headers)
    finally:
        conn.close()


def test_good_token_is_issued_with_ttl_echoed_and_accepted(live):
    response = put_token(live, "60")
    assert response.status == 200
    assert response.headers["x-aws-ec2-metadata-token-ttl-seconds"] == "60"
    token = response.body.decode()
    assert token
    assert live.get(ID, headers={TOKEN_HEADER: token}).body == b"i-aaaa"


def test_bad_token_is_401(live):
    assert live.get(ID, headers={TOKEN_HEADER: "not-a-token"}).status == 401
    forged = put_token(live).body.decode()
    forged = forged[:-4] + ("AAAA" if not forged.endswith("AAAA") else "BBBB")
    assert live.get(ID, headers={TOKEN_HEADER: forged}).status == 401


def test_expired_token_is_401(live):
    token = put_token(live, "1").body.decode()
    assert live.get(ID, headers={TOKEN_HEADER: token}).status == 200
    time.sleep(2.0)  # past the 1 s TTL
    assert live.get(ID, headers={TOKEN_HEADER: token}).status == 401


def test_token_of_another_instance_is_401(live):
    token_b = put_token(live, source="127.0.0.3").body.decode()
    assert live.get(ID, source="127.0.0.3", headers={TOKEN_HEADER: token_b}).status == 200
    assert live.get(ID, source="127.0.0.2", headers={TOKEN_HEADER: token_b}).status == 401


@pytest.mark.parametrize("ttl", [None, "0", "21601", "99999999999999999999", "-5", "abc", ""])
def test_missing_zero_or_huge_ttl_is_400(live, ttl):
    assert put_token(live, ttl).status == 400


@pytest.mark.parametrize("ttl", ["1", "21600"])
def test_ttl_bounds_are_accepted(live, ttl):
    assert put_token(live, ttl).status == 200


def test_put_with_x_forwarded_for_is_403(live):
    assert put_token(live, extra={"X-Forwarded-For": "10.1.1.1"}).status == 403


def test_imdsv2_required_instance_without_token_is_401(live):
    assert live.get(ID, source="127.0.0.4").status == 401
    token = put_token(live, source="127.0.0.4").body.decode()
    assert live.get(ID, source="127.0.0.4", headers={TOKEN_HEADER: token}).body == b"i-strict"


def test_imdsv1_works_by_default(live):
    assert live.get(ID).status == 200


def test_get_on_token_path_is_405(live):
    assert live.get(TOKEN).status == 405



def test_token_reply_leaves_with_ip_ttl_1(live):
    """Capture the reply on lo with a packet socket and read the IPv4 TTL field."""
    try:
        sniffer = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
    except PermissionError:
        pytest.skip("needs CAP_NET_RAW")
    sniffer.bind(("lo", 0))
    sniffer.settimeout(5)
    try:
        conn = live.connect("127.0.0.2")
        client_port = conn.sock.getsockname()[1]
        token = conn.request("PUT", TOKEN, {TTL: "60"}).body
        plain = conn.request("GET", ID).body
        conn.close()
        ttls = {}
        deadline_packets = 200
        while deadline_packets and len(ttls) < 2:
            deadline_packets -= 1
            packet = sniffer.recv(65535)
            ihl = (packet[0] & 0x0F) * 4
            if packet[9] != socket.IPPROTO_TCP:
                continue
            dport = int.from_bytes(packet[ihl + 2:ihl + 4], "big")
            payload_at = ihl + (packet[ihl + 12] >> 4) * 4
            payload = packet[payload_at:]
            if dport == client_port and payload:
                ttls[b"token" if token in payload else b"plain" if plain in payload
                     else b"?"] = packet[8]
        assert ttls.get(b"token") == 1
        assert ttls.get(b"plain", 64) > 1
    finally:
        sniffer.close()
