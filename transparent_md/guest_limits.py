"""Every limit a hostile guest meets, declared once: name, default, unit, help, "0 disables".

The port program's limits (per port, in the datapath) and the responder's (per guest =
port, MAC, IP) are each one `Limit` below. Everything else is derived from this table:
`run`'s option groups and its config-file keys (the same names), the defaults of
`DatapathConfig` and `ResponderLimits`, which limits 0 switches off, and the tables of
docs/hostile-guests.md (`python -m transparent_md.guest_limits --markdown`; a test
checks the document holds the generated tables). Adding a limit is adding one entry
(and the code that enforces it).

Every default is far above what an honest guest does and far below what it takes for
one guest to starve another: cloud-init's whole boot is a few dozen requests, each on a
fresh connection, one after another; an SDK keeps a small pool of connections and
refreshes credentials a few times an hour.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

PORT = "port"
GUEST = "guest"


@dataclass(frozen=True)
class Limit:
    """One limit: `run --NAME` on the command line, `NAME:` in the config file."""

    name: str  # flag without the dashes, and config-file key
    field: str  # DatapathConfig (PORT) or ResponderLimits (GUEST) attribute
    scope: str  # PORT: per port, in the port program; GUEST: per guest, in the responder
    default: int | float
    unit: str
    help: str  # what it bounds
    over: str  # what happens over it (docs)
    whole: bool = True  # a count; else any number >= 0
    zero_disables: bool = True

    @property
    def flag(self) -> str:
        return f"--{self.name}"

    @property
    def metavar(self) -> str:
        return {"s": "SECONDS", "/s": "PER_S", "bytes": "BYTES"}.get(self.unit, "N")

    def shown(self, value: int | float | None = None) -> str:
        """`value` (default: the default) with its unit, as help and docs print it."""
        value = self.default if value is None else value
        space = "" if self.unit.startswith("/") else " "
        return f"{value:g}" + (f"{space}{self.unit}" if self.unit else "")


LIMITS: tuple[Limit, ...] = (
    # A guest with a few secondary addresses, or a few containers with their own MACs,
    # fits easily; a guest forging random sources fills its own quota, not the host's.
    Limit("port-identity-quota", "port_identity_quota", PORT, 32, "",
          "identities (MAC, IP or IPv6 address) one port may hold a slot for at once",
          "the new identity's SYN is dropped (`port_quota`); identities that have a slot "
          "keep being served"),
    # A cloud-init crawl opens a few dozen connections, an SDK a handful.
    Limit("port-syn-rate", "port_syn_rate", PORT, 100, "/s",
          "SYNs to 169.254.169.254:80 per second per port",
          "SYN dropped (`syn_rate`); the guest's TCP retries"),
    Limit("port-syn-burst", "port_syn_burst", PORT, 200, "",
          "SYNs a port may send at once above that rate",
          "SYN dropped (`syn_rate`); the guest's TCP retries"),
    Limit("port-mac-quota", "port_mac_quota", PORT, 8, "",
          "MACs one port may lock to itself (a MAC is locked to the first port it asked "
          "from)", "a SYN from a new MAC is dropped (`mac_quota`)"),
    # cloud-init uses one connection at a time and an SDK pool about ten, but a VM running
    # many containers (a Kubernetes node whose pods all fetch credentials at start) opens
    # a few hundred at once through one interface.
    Limit("max-conns-per-identity", "max_conns_per_identity", GUEST, 256, "",
          "open connections one guest may hold",
          "closed at once, `transparent_md_connections_refused_total{reason=\"identity\"}`"),
    # A guest with a few secondary addresses (each its own identity) fits four of them.
    Limit("max-conns-per-port", "max_conns_per_port", GUEST, 1024, "",
          "open connections of all guests (identities) behind one port",
          "closed at once, `{reason=\"port\"}`"),
    # A released slot under a connection, a stray packet: they only ever get 404.
    Limit("max-conns-unknown", "max_conns_unknown", GUEST, 256, "",
          "open connections from shadow addresses that map to no guest",
          "closed at once, `{reason=\"unknown\"}`"),
    # nginx's keepalive_requests, same default: clients reconnect transparently.
    Limit("keepalive-requests", "keepalive_requests", GUEST, 1000, "",
          "requests per keep-alive connection (as nginx)",
          "that reply carries `Connection: close`"),
    # Far beyond any crawl; no connection stays forever with a GET now and then.
    Limit("keepalive-time", "keepalive_time_s", GUEST, 300.0, "s",
          "lifetime of a keep-alive connection (nginx's `keepalive_time`)",
          "the next reply carries `Connection: close`", whole=False),
    # nginx's client_header_timeout is longer; a metadata request head is sent at once.
    Limit("header-timeout", "header_timeout_s", GUEST, 10.0, "s",
          "time from a request head's first byte to its end (slowloris)",
          "408, closed", whole=False),
    # A token bucket per guest, as AWS throttles each interface: far above what a
    # booting guest averages; the burst holds several whole cloud-init crawls at once.
    Limit("request-rate", "request_rate", GUEST, 200.0, "/s",
          "requests per second of one guest", "429 with `Retry-After: 1`, closed",
          whole=False),
    Limit("request-burst", "request_burst", GUEST, 400, "",
          "requests above the rate at once", "429 with `Retry-After: 1`, closed"),
    # Past it, a connection's further (pipelined) requests wait unread until its output
    # drains to a quarter of it: a guest that asks without reading holds this, plus one
    # reply, per connection. Twice the largest user-data (the largest reply) fits.
    Limit("max-unsent-bytes", "max_unsent_bytes", GUEST, 32 * 1024, "bytes",
          "replies one connection holds unsent in the responder (its socket is full: the "
          "guest does not read)", "its further pipelined requests wait unread until the "
          "output drains to a quarter of it"),
    # Whatever the peer's window and whether or not the connection is already closing:
    # an honest client takes its reply at once.
    Limit("send-timeout", "send_timeout_s", GUEST, 10.0, "s",
          "how long a connection's output may wait unsent with no progress, closing or not",
          "reset (RST, `SO_LINGER` 0), `transparent_md_send_timeouts_total`", whole=False),
)
BY_FIELD = {limit.field: limit for limit in LIMITS}
PORT_LIMITS = tuple(limit for limit in LIMITS if limit.scope == PORT)
GUEST_LIMITS = tuple(limit for limit in LIMITS if limit.scope == GUEST)


def default(field: str) -> int | float:
    """The declared default of the limit held in `field`."""
    return BY_FIELD[field].default


def markdown_table(scope: str) -> str:
    """The docs' table of the limits of one scope (PORT or GUEST)."""
    rows = ["| flag and config key | default | what it bounds | over it |", "|---|---|---|---|"]
    for limit in LIMITS:
        if limit.scope == scope:
            rows.append(f"| `{limit.flag}` / `{limit.name}:` | {limit.shown()} | {limit.help} "
                        f"| {limit.over} |")
    return "\n".join(rows)


if __name__ == "__main__":  # python -m transparent_md.guest_limits --markdown
    if sys.argv[1:] != ["--markdown"]:
        sys.exit("usage: python -m transparent_md.guest_limits --markdown")
    print(f"Per port, in the port program:\n\n{markdown_table(PORT)}\n\n"
          f"Per guest, in the responder:\n\n{markdown_table(GUEST)}")
