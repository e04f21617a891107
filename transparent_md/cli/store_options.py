"""`--store` and the etcd TLS options, the same on every command that opens the store."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from transparent_md.store import DEFAULT_STORE_PATH
from transparent_md.store.etcd_url import EtcdTls

if TYPE_CHECKING:
    from transparent_md.store import Store

STORE_HELP = (f"instance store: a SQLite file (default {DEFAULT_STORE_PATH}), or a fleet's "
              "etcd as etcd://HOST:PORT[,HOST:PORT...]/PREFIX (etcds:// for TLS); a file "
              "that does not exist is created only by `instance add`, `import` and `apply` "
              "(and `run`, with a warning), refused by every other verb")


def add_store_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", metavar="PATH|URL", default=None, help=STORE_HELP)
    tls = parser.add_argument_group("etcd TLS (for an etcd:// store; any of them means https)")
    tls.add_argument("--etcd-cacert", metavar="PATH", help="CA bundle that signed the members")
    tls.add_argument("--etcd-cert", metavar="PATH", help="client certificate")
    tls.add_argument("--etcd-key", metavar="PATH", help="client certificate's private key")


def etcd_tls(args: argparse.Namespace) -> EtcdTls | None:
    """The TLS files given, or None."""
    tls = EtcdTls(getattr(args, "etcd_cacert", None), getattr(args, "etcd_cert", None),
                  getattr(args, "etcd_key", None))
    return tls if tls.enabled or tls.key else None


def open_from_args(args: argparse.Namespace, *, create: bool = False) -> Store:
    """The store `--store` names. Only verbs that create records pass `create=True`:
    any other verb refuses a store file that does not exist (a typo), creating nothing."""
    from transparent_md.store import open_store

    return open_store(args.store, etcd_tls(args), create=create)
