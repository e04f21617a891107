"""rawsock: the last reply sent with MSG_MORE arrives whole with the FIN; TTL set on an fd."""

from __future__ import annotations

import socket

from transparent_md.responder.rawsock import RawSocketCalls


def _connected_pair() -> tuple[socket.socket, socket.socket]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    return client, server


def test_last_reply_then_close_reaches_the_peer_with_eof():
    client, server = _connected_pair()
    with client:
        reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
        assert RawSocketCalls.send_last(server.fileno(), reply) == len(reply)
        server.close()  # releases the held segment with the FIN
        client.settimeout(5)
        received = b""
        while chunk := client.recv(4096):
            received += chunk
        assert received == reply


def test_send_on_a_closed_descriptor_takes_nothing():
    client, server = _connected_pair()
    fd = server.fileno()
    server.close()
    client.close()
    assert RawSocketCalls.send_last(fd, b"x") == 0


def test_set_int_option_sets_and_restores_ttl():
    client, server = _connected_pair()
    with client, server:
        calls = RawSocketCalls()
        default = server.getsockopt(socket.IPPROTO_IP, socket.IP_TTL)
        assert calls.set_int_option(server.fileno(), socket.IPPROTO_IP, socket.IP_TTL, 1)
        assert server.getsockopt(socket.IPPROTO_IP, socket.IP_TTL) == 1
        assert calls.set_int_option(server.fileno(), socket.IPPROTO_IP, socket.IP_TTL, -1)
        assert server.getsockopt(socket.IPPROTO_IP, socket.IP_TTL) == default
