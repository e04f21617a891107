"""TCP counters of one namespace (`nstat`), read before and after a load.

The responder namespace's counters say what the kernel did to connections the daemon
never saw: a full accept queue drops the handshake's last ACK (ListenOverflows,
counted again in ListenDrops), a full SYN queue answers with cookies or drops.
"""

from __future__ import annotations

import subprocess

# The counters the storm report shows, in this order.
STORM_COUNTERS = (
    "TcpExtListenOverflows",   # accept queue full: the handshake's ACK was dropped
    "TcpExtListenDrops",       # every drop at a listener, overflows included
    "TcpExtTCPReqQFullDrop",   # SYN queue full and no cookies: SYN dropped
    "TcpExtSyncookiesSent",    # SYN queue full: answered with a cookie instead
    "TcpExtTCPTimeWaitOverflow",  # no TIME-WAIT bucket left: closed without one
    "TcpExtPAWSEstab",         # segments refused as old by the timestamp check
    "TcpRetransSegs",          # the daemon's own retransmissions
)


def counters(ns: str, mount_ns_of: int | None = None) -> dict[str, int]:
    """Absolute values of every counter in `ns` (nstat's history file left alone).

    `mount_ns_of`: a PID whose mount namespace holds the name (a daemon started with
    `ip netns exec` names its responder namespace inside its own mount namespace).
    """
    enter = ["nsenter", "-t", str(mount_ns_of), "-m"] if mount_ns_of else []
    res = subprocess.run([*enter, "ip", "netns", "exec", ns, "nstat", "-a", "-s", "-z"],
                         capture_output=True, text=True, check=True)
    out = {}
    for line in res.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 2 and not line.startswith("#") and fields[1].isdigit():
            out[fields[0]] = int(fields[1])
    return out


def delta(before: dict[str, int], after: dict[str, int],
          names: tuple[str, ...] = STORM_COUNTERS) -> dict[str, int]:
    return {name: after.get(name, 0) - before.get(name, 0) for name in names}
