"""`--store etcd://HOST:PORT[,HOST:PORT...]/PREFIX`: where a fleet's records live.

Parsing only (no etcd client imported), so the SQLite-only path never loads one. The
URL is parsed once, where it is given (the CLI, the daemon's store source), into an
`EtcdTarget` that travels from there: to the follower, the admin API and, as
`as_dict()`, to the serving workers.
"""

from __future__ import annotations

from dataclasses import dataclass

from transparent_md.errors import UserError

SCHEME = "etcd://"
SCHEME_TLS = "etcds://"
# etcd's own client port; an endpoint without one means this.
DEFAULT_ETCD_PORT = 2379


@dataclass(frozen=True)
class EtcdTls:
    """TLS files as etcd's own clients name them (etcdctl --cacert/--cert/--key)."""

    cacert: str | None = None
    cert: str | None = None
    key: str | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.cacert or self.cert)


@dataclass(frozen=True)
class EtcdTarget:
    endpoints: tuple[tuple[str, int], ...]
    prefix: str  # "/tmd" style: no trailing slash
    tls: EtcdTls = EtcdTls()
    secure: bool = False  # https to the members (etcds://, or any TLS file given)

    @property
    def instances_prefix(self) -> str:
        """Records are JSON values under PREFIX/instances/<id>."""
        return f"{self.prefix}/instances/"

    @property
    def passwords_prefix(self) -> str:
        """OpenStack passwords guests posted, at PREFIX/passwords/<id>."""
        return f"{self.prefix}/passwords/"

    @property
    def root(self) -> str:
        """Everything of this fleet (records and passwords): what a daemon follows."""
        return f"{self.prefix}/"

    def as_dict(self) -> dict:
        """The target as JSON-able data: how it travels to the serving workers."""
        return {"endpoints": [list(e) for e in self.endpoints], "prefix": self.prefix,
                "tls": [self.tls.cacert, self.tls.cert, self.tls.key], "secure": self.secure}

    @classmethod
    def from_dict(cls, data: dict) -> EtcdTarget:
        return cls(tuple((str(h), int(p)) for h, p in data["endpoints"]), data["prefix"],
                   EtcdTls(*data["tls"]), data["secure"])

    def describe(self) -> str:
        hosts = ",".join(_join(h, p) for h, p in self.endpoints)
        return f"{SCHEME_TLS if self.secure else SCHEME}{hosts}{self.prefix}"


def is_etcd_url(store: str | None) -> bool:
    return bool(store) and store.startswith((SCHEME, SCHEME_TLS))


def parse_etcd_url(url: str, tls: EtcdTls | None = None) -> EtcdTarget:
    """`etcd://h1:2379,h2:2379/fleet` -> endpoints and the key prefix `/fleet`.

    `etcds://` is the same with TLS, which any of --etcd-cacert/--etcd-cert also turn on.
    """
    scheme = SCHEME_TLS if url.startswith(SCHEME_TLS) else SCHEME
    rest = url[len(scheme):]
    hosts, slash, prefix = rest.partition("/")
    prefix = "/" + prefix.strip("/")
    if not slash or prefix == "/":
        raise UserError(f"--store {url}: name a key prefix, e.g. etcd://127.0.0.1:2379/tmd")
    endpoints = tuple(_endpoint(url, h) for h in hosts.split(",") if h)
    if not endpoints:
        raise UserError(f"--store {url}: name at least one HOST:PORT")
    tls = tls or EtcdTls()
    return EtcdTarget(endpoints, prefix, tls, secure=scheme == SCHEME_TLS or tls.enabled)


def _endpoint(url: str, text: str) -> tuple[str, int]:
    if text.startswith("["):  # [v6]:port
        host, _, port = text[1:].partition("]")
        port = port.lstrip(":")
    else:
        host, _, port = text.rpartition(":") if ":" in text else (text, "", "")
    try:
        number = int(port) if port else DEFAULT_ETCD_PORT
    except ValueError:
        raise UserError(f"--store {url}: {text!r} is not HOST:PORT") from None
    if not host or not 0 < number < 65536:
        raise UserError(f"--store {url}: {text!r} is not HOST:PORT")
    return host, number


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
