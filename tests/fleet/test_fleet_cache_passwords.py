"""The fleet cache's passwords and the serving store's refusal, in-process: a real SQLite
cache file, and an etcd "member" on a loopback port where nothing listens (refused at
once), so no root and no etcd are needed."""

from __future__ import annotations

import pytest

from tests.conftest import Clock
from transparent_md.store.errors import StoreUnavailable
from transparent_md.store.etcd_url import parse_etcd_url
from transparent_md.store.fleet_cache import FleetCache, remember_posted_password
from transparent_md.store.fleet_serving import UNAVAILABLE_BACKOFF_S, FleetCacheStore

pytest.importorskip("etcd3gw")

# Port 1 (tcpmux) on loopback: nothing listens there, so a connection is refused at once.
REFUSING_URL = "etcd://127.0.0.1:1/fleet"


@pytest.fixture
def cache(tmp_path):
    cache = FleetCache(str(tmp_path / "cache.db"))
    yield cache
    cache.close()


def test_password_changes_follow_the_watch_without_reloading_readers(cache):
    stamp = cache.store._generation.current()
    cache.apply([], 7, [("i-a", b"first", 7)])
    assert cache.password("i-a") == "first"
    assert cache.store._generation.current() == stamp  # no record changed: no reload
    cache.apply([], 9, [("i-a", None, 9)])
    assert cache.password("i-a") is None
    assert cache.revision == 9


def test_a_resync_replaces_every_password(cache):
    cache.apply([], 3, [("i-gone", b"old", 3)])
    cache.replace_all({}, 12, source="/fleet/", cluster_id="c",
                      passwords={"i-new": (b"new", 11)})
    assert cache.password("i-gone") is None
    assert cache.password("i-new") == "new"


def test_a_posted_password_is_remembered_only_while_the_cache_is_behind(cache):
    cache.apply([], 10, [])
    # The follower already reached revision 10: a post written at 8 (maybe cleared
    # since) must not come back.
    assert not remember_posted_password(cache.store, "i-a", "stale", 8)
    assert cache.password("i-a") is None
    assert remember_posted_password(cache.store, "i-a", "fresh", 11)
    assert cache.password("i-a") == "fresh"


def test_etcd_unreachable_post_is_refused_then_not_retried_until_the_back_off_ends(
        cache):
    clock = Clock()
    store = FleetCacheStore(cache.path, parse_etcd_url(REFUSING_URL), clock=clock)
    try:
        with pytest.raises(StoreUnavailable, match="unreachable"):
            store.set_password_once("i-a", "pw")
        clock.now += UNAVAILABLE_BACKOFF_S / 2
        with pytest.raises(StoreUnavailable, match="not trying etcd again yet"):
            store.set_password_once("i-a", "pw")
        clock.now += UNAVAILABLE_BACKOFF_S
        with pytest.raises(StoreUnavailable, match="unreachable"):  # tried again
            store.set_password_once("i-a", "pw")
        cache.apply([], 4, [("i-a", b"known", 4)])
        assert store.password("i-a") == "known"  # the last known value is still served
    finally:
        store.close()
