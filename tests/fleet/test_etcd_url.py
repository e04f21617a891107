"""`--store etcd://...` parsing: no etcd, no root."""

from __future__ import annotations

import pytest

from transparent_md.errors import UserError
from transparent_md.store.etcd_url import EtcdTls, is_etcd_url, parse_etcd_url


def test_endpoints_prefix_and_tls():
    target = parse_etcd_url("etcd://10.0.0.1:2379,[fd00::1]:2381,etcd3/fleet/a/")
    assert target.endpoints == (("10.0.0.1", 2379), ("fd00::1", 2381), ("etcd3", 2379))
    assert target.prefix == "/fleet/a"
    assert target.instances_prefix == "/fleet/a/instances/"
    assert not target.secure
    assert parse_etcd_url("etcds://h:1/p").secure
    assert parse_etcd_url("etcd://h:1/p", EtcdTls(cacert="/ca.pem")).secure


@pytest.mark.parametrize("url", ["etcd://h:1", "etcd://h:1/", "etcd:///p", "etcd://h:x/p",
                                 "etcd://h:70000/p"])
def test_bad_urls_are_one_clear_error(url):
    with pytest.raises(UserError, match="--store"):
        parse_etcd_url(url)


def test_sqlite_paths_are_not_etcd():
    assert not is_etcd_url("/var/lib/transparent-md/instances.db")
    assert not is_etcd_url(None)
    assert is_etcd_url("etcd://h:1/p")
