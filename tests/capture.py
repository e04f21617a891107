"""tcpdump in a test's namespace, written to a pcap file and read back with dpkt."""

from __future__ import annotations

import select
import subprocess
import time
from collections.abc import Callable

import dpkt

from transparent_md.lab.hypervisor import Hypervisor
from transparent_md.process import stop_process

# Bound on waiting for tcpdump to open its socket, and for a capture to show what was
# sent (never an assertion on time).
CAPTURE_START_TIMEOUT_S = 10.0
CAPTURE_WAIT_S = 10.0
CAPTURE_POLL_S = 0.05


def read_pcap(path: str) -> list[bytes]:
    with open(path, "rb") as handle:
        return [bytes(buf) for _, buf in dpkt.pcap.Reader(handle)]


class Capture:
    """tcpdump on eth0 of a namespace, stopped by PID; frames read back with dpkt."""

    def __init__(self, hv: Hypervisor, ns: str, path: str, expression: str = "") -> None:
        self.path = path
        # --immediate-mode: without it frames wait in a ring block that a stop can lose.
        argv = ["tcpdump", "-i", "eth0", "--immediate-mode", "-U", "-n", "-s", "0", "-w", path]
        self.proc = hv.topo.spawn(ns, argv + ([expression] if expression else []),
                                  stderr=subprocess.PIPE, text=True)
        self._wait_listening()

    def _wait_listening(self) -> None:
        """tcpdump says "listening on" once its socket is open: no frame is missed."""
        deadline = time.monotonic() + CAPTURE_START_TIMEOUT_S
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self.proc.stderr], [], [], left)
            line = self.proc.stderr.readline() if ready else ""
            if "listening on" in line:
                return
            if not line and (not ready or self.proc.poll() is not None):
                break
        stop_process(self.proc)
        raise RuntimeError(f"tcpdump did not start within {CAPTURE_START_TIMEOUT_S:g} s")

    def frames(self, until: Callable[[list[bytes]], object]) -> list[bytes]:
        """Frames captured once `until(frames)` holds (or after a bounded wait)."""
        deadline = time.monotonic() + CAPTURE_WAIT_S
        while time.monotonic() < deadline:
            try:
                frames = read_pcap(self.path)
            except (ValueError, dpkt.NeedData):
                frames = []  # the file is being written: read again
            if until(frames):
                break
            time.sleep(CAPTURE_POLL_S)
        self.stop()
        return read_pcap(self.path)

    def stop(self) -> None:
        stop_process(self.proc)
