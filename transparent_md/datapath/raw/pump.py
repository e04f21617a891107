"""The thread that moves frames: guest ports -> responder, responder -> guest ports.

A thread of its own with its own epoll, not the responder's serving loop: the datapath
is started and stopped with the other datapath parts, must keep answering ARP and
passing SYNs while the loop is busy with a request (or runs in another worker
process), and must never make the loop wait on it. Per frame it holds the GIL for tens
of microseconds; it reads at most `BATCH` frames from one socket before looking at the
others, so one flooding port cannot starve its neighbours.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import select
import socket
import threading

from transparent_md.datapath import layout
from transparent_md.datapath.layout import Drop, Event
from transparent_md.datapath.raw import frames
from transparent_md.datapath.raw.admission import Admission
from transparent_md.datapath.raw.packet_socket import (
    TP_STATUS_CSUMNOTREADY,
    TP_STATUS_VLAN_VALID,
    Receiver,
)
from transparent_md.datapath.tables import SharedTable
from transparent_md.process import start_thread

log = logging.getLogger(__name__)

# Frames read from one guest port before the others get their turn.
BATCH = 64
# The responder's socket carries every guest's replies: it is drained (up to this many
# frames) at each round and again after every RESPONDER_EVERY ports, so a round over a
# thousand busy ports never leaves replies queued behind them until its queue overflows.
RESPONDER_BATCH = 4096
RESPONDER_EVERY = 16
# How long the thread waits for frames before it checks whether it should stop.
POLL_INTERVAL_S = 0.2
ARP_REQUEST = 1
_ZERO_IP = b"\0\0\0\0"


class Pump:
    """Owns the packet sockets; `add_port`/`remove_port` are called from other threads."""

    def __init__(self, admission: Admission, arp_table: SharedTable, responder_mac: str,
                 arp_mac: str, answer_metadata_arp: bool) -> None:
        self.admission = admission
        self.arp_table = arp_table
        self.responder_mac = layout.mac_bytes(responder_mac)
        self.arp_mac = layout.mac_bytes(arp_mac)
        self.answer_metadata_arp = answer_metadata_arp
        self._epoll = select.epoll()
        self._by_fd: dict[int, tuple[int, socket.socket]] = {}
        self._by_ifindex: dict[int, socket.socket] = {}
        self._responder: socket.socket | None = None
        self._receiver = Receiver()
        self._arp_key = layout.ArpKey()
        self._flag = ctypes.c_uint8()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- sockets --------------------------------------------------------------------
    def set_responder(self, sock: socket.socket) -> None:
        self._responder = sock
        self._epoll.register(sock.fileno(), select.EPOLLIN)

    def add_port(self, ifindex: int, sock: socket.socket) -> None:
        with self._lock:
            self._drop_port(ifindex)
            self._by_fd[sock.fileno()] = (ifindex, sock)
            self._by_ifindex[ifindex] = sock
            self._epoll.register(sock.fileno(), select.EPOLLIN)

    def remove_port(self, ifindex: int) -> None:
        with self._lock:
            self._drop_port(ifindex)

    def port_sockets(self) -> dict[int, socket.socket]:
        return dict(self._by_ifindex)

    def _drop_port(self, ifindex: int) -> None:
        sock = self._by_ifindex.pop(ifindex, None)
        if sock is None:
            return
        self._by_fd.pop(sock.fileno(), None)
        with contextlib.suppress(OSError):
            self._epoll.unregister(sock.fileno())
        sock.close()

    # -- the thread -----------------------------------------------------------------
    def start(self) -> None:
        self._thread = start_thread("raw-datapath", self._run)

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        with self._lock:
            for ifindex in list(self._by_ifindex):
                self._drop_port(ifindex)
        if self._responder is not None:
            self._responder.close()
            self._responder = None
        self._epoll.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                ready = self._epoll.poll(POLL_INTERVAL_S)
            except OSError:
                continue
            self._guarded(self._serve_responder)
            for count, (fd, _) in enumerate(ready, 1):
                self._guarded(self._serve_port, fd)
                if count % RESPONDER_EVERY == 0:
                    self._guarded(self._serve_responder)

    @staticmethod
    def _guarded(action, *args) -> None:
        try:
            action(*args)
        except Exception:  # one bad frame or port never stops the datapath
            log.exception("raw datapath: a frame failed; going on")

    def _serve_responder(self) -> None:
        responder = self._responder
        if responder is None:
            return
        for _ in range(RESPONDER_BATCH):
            got = self._read(responder)
            if got is None:
                return
            self.on_reply(*got)

    def _serve_port(self, fd: int) -> None:
        port = self._by_fd.get(fd)
        if port is None:
            return
        ifindex, sock = port
        for _ in range(BATCH):
            got = self._read(sock)
            if got is None:
                return
            self.on_port_frame(ifindex, sock, *got)

    def _read(self, sock: socket.socket) -> tuple[bytes, int] | None:
        try:
            return self._receiver.read(sock)
        except OSError:  # closed under us by remove_port: the port is gone
            return None

    # -- one frame ------------------------------------------------------------------
    def on_port_frame(self, ifindex: int, sock: socket.socket, frame: bytes,
                      status: int) -> None:
        """A frame a guest sent on its port (the bridge gets its own copy, which the
        nftables table drops when it is ours)."""
        seen = frames.read_port_frame(frame, bool(status & TP_STATUS_VLAN_VALID))
        if seen is None:
            return
        if isinstance(seen, frames.Refused):
            self.admission.count(seen.reason)
        elif isinstance(seen, frames.Arp):
            self.on_arp(ifindex, sock, seen)
        else:
            self.on_request(ifindex, seen, bool(status & TP_STATUS_CSUMNOTREADY))

    def on_request(self, ifindex: int, request: frames.Request, partial: bool) -> None:
        slot = self.admission.admit(ifindex, request.guest_ip, request.guest_mac,
                                    request.gw_mac, request.opens)
        if isinstance(slot, Drop):
            self.admission.count(slot)
            return
        shadow = (int.from_bytes(self.admission.config.shadow_net.to_bytes(4, "little"), "big")
                  | slot).to_bytes(4, "big")
        out = frames.request_to_responder(request, shadow, self.responder_mac, partial)
        if self._send(self._responder, out):
            self.admission.count(Event.REQUEST_REDIRECTED)

    def _answers_for(self, ifindex: int, ip: bytes) -> bool:
        self._arp_key.ifindex = ifindex
        self._arp_key.ip = int.from_bytes(ip, "little")
        return self.arp_table.lookup(self._arp_key, self._flag)

    def on_arp(self, ifindex: int, sock: socket.socket, arp: frames.Arp) -> None:
        if arp.sender_ip == frames.METADATA_IP or self._answers_for(ifindex, arp.sender_ip):
            self.admission.count(Drop.TAGGED_ARP_CLAIM if arp.tagged else Drop.ARP_CLAIM)
            return
        if arp.tagged:
            if arp.target_ip == frames.METADATA_IP:
                self.admission.count(Drop.TAGGED_METADATA)
            return
        # A probe (sender 0.0.0.0) or a gratuitous ARP needs no answer from us.
        if arp.op != ARP_REQUEST or arp.sender_ip in (_ZERO_IP, arp.target_ip):
            return
        if arp.target_ip == frames.METADATA_IP:
            if not self.answer_metadata_arp:
                return
        elif not self._answers_for(ifindex, arp.target_ip):
            return
        if self._send(sock, frames.arp_reply(arp, self.arp_mac)):
            self.admission.count(Event.ARP_ANSWERED)

    def on_reply(self, frame: bytes, status: int) -> None:
        """A frame the responder sent: back to the guest whose shadow slot it is for."""
        reply = frames.read_reply(frame)
        if reply is None:
            self.admission.count(Drop.REPLY_UNSERVED)
            return
        slot = self.admission.slot_of(reply.shadow_ip)
        sock = self._by_ifindex.get(slot.ifindex) if slot is not None else None
        if sock is None:
            self.admission.count(Drop.REPLY_NO_SLOT)
            return
        out = frames.reply_to_guest(reply, slot.ip.to_bytes(4, "little"), bytes(slot.mac),
                                    bytes(slot.gw_mac), bool(status & TP_STATUS_CSUMNOTREADY))
        if self._send(sock, out):
            self.admission.count(Event.REPLY_REDIRECTED)

    def _send(self, sock: socket.socket | None, frame: bytes) -> bool:
        if sock is None:
            return False
        try:
            sock.send(frame)
            return True
        except OSError as exc:  # full queue, a link going down, a frame over its MTU
            log.debug("raw datapath: send failed: %s", exc)
            self.admission.count(Drop.REWRITE_FAILED)
            return False
