"""The defences' building blocks in process: caps, buckets, rate-limited log, memos."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from tests.responder.fakes import (
    GUEST,
    GUEST_SECOND_IP,
    STRICT,
    FakeClient,
    make_state,
    make_store,
    request,
)
from transparent_md.identity import Guest
from transparent_md.responder.admission import (
    ConnectionCaps,
    RequestBuckets,
    TokenBucket,
    identity_of,
)
from transparent_md.responder.limits import ResponderLimits
from transparent_md.responder.memory import FLOOD_MIN_CONNECTIONS, MemoryReclaimer
from transparent_md.responder.metrics import ResponderStats, StatsCollector
from transparent_md.responder.prepared import PREPARED_PER_ENTRY, prepared_for
from transparent_md.responder.ratelog import RateLimitedLog
from transparent_md.store import open_store, parse_record


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_limits_refuse_nonsense():
    with pytest.raises(ValueError):
        ResponderLimits(max_conns_per_identity=0)
    with pytest.raises(ValueError):
        ResponderLimits(header_timeout_s=0)
    with pytest.raises(ValueError):
        ResponderLimits(linger_bytes=-1)


def test_limits_off_lets_a_flood_through(tmp_path):
    store = make_store(str(tmp_path / "i.db"))
    try:
        state = make_state(store, ResponderLimits.off())
        clients = [FakeClient(state) for _ in range(500)]
        assert not any(c.transport.closed for c in clients)
        replies = clients[0].send(request("/latest/meta-data/instance-id") * 2000)
        assert replies.count(b"HTTP/1.1 200 ") == 2000
    finally:
        store.close()


def test_limits_from_flags_take_zero_as_off():
    limits = ResponderLimits.from_flags(request_rate=0, request_burst=0, header_timeout_s=0,
                                        max_conns_per_identity=5, keepalive_time_s=3)
    assert limits.request_rate >= 1 << 40 and limits.request_burst >= 1 << 40
    assert limits.header_timeout_s >= 1 << 40
    assert limits.max_conns_per_identity == 5 and limits.keepalive_time_s == 3
    with pytest.raises(ValueError):
        ResponderLimits.from_flags(linger_s=0)  # not a limit one can switch off


def test_caps_count_and_release():
    caps = ConnectionCaps(ResponderLimits(max_conns_per_identity=2, max_conns_per_port=3,
                                          max_conns_unknown=1))
    def admit(guest):
        return caps.admit(guest, identity_of(guest))

    assert admit(GUEST) is None and admit(GUEST) is None
    assert admit(GUEST) == "identity"
    assert admit(GUEST_SECOND_IP) is None
    assert admit(GUEST_SECOND_IP) == "port"
    assert admit(STRICT) is None
    assert admit(None) is None and admit(None) == "unknown"
    for guest in (GUEST, GUEST, GUEST_SECOND_IP, STRICT, None):
        caps.release(guest, identity_of(guest))
    assert caps.per_identity == {} and caps.per_port == {} and caps.unknown == 0


def test_token_bucket_refills_at_its_rate_up_to_its_burst():
    clock = Clock()
    bucket = TokenBucket(rate=10.0, burst=5, clock=clock)
    assert all(bucket.take() for _ in range(5))
    assert not bucket.take()
    clock.now += 0.11  # one token (and a bit: floats)
    assert bucket.take() and not bucket.take()
    clock.now += 100  # long idle: no more than the burst
    assert sum(bucket.take() for _ in range(10)) == 5


def test_buckets_are_per_identity_and_swept_when_full_and_unused():
    clock = Clock()
    buckets = RequestBuckets(ResponderLimits(request_rate=1.0, request_burst=2), clock)
    bucket = buckets.bucket_for(identity_of(GUEST))
    assert buckets.bucket_for(identity_of(GUEST)) is bucket
    assert buckets.bucket_for(identity_of(GUEST_SECOND_IP)) is not bucket
    bucket.take()
    buckets.sweep(connected={}, unknown_connected=False)
    assert set(buckets.buckets) == {(10, GUEST.mac, GUEST.ip)}  # the used one stays
    clock.now += 5
    buckets.sweep(connected={(10, GUEST.mac, GUEST.ip): 1}, unknown_connected=False)
    assert set(buckets.buckets) == {(10, GUEST.mac, GUEST.ip)}  # connected: kept
    buckets.sweep(connected={}, unknown_connected=False)
    assert buckets.buckets == {}


def test_rate_limited_log_once_per_event_and_guest_and_bounded(caplog):
    clock = Clock()
    events = RateLimitedLog(logging.getLogger("test.defences"), interval_s=60, max_keys=3,
                            clock=clock)
    with caplog.at_level(logging.WARNING):
        assert events.warn("cap", GUEST, "refused")
        assert not events.warn("cap", GUEST, "refused")
        assert events.warn("cap", STRICT, "refused")
        assert events.warn("rate", GUEST, "throttled")
        clock.now += 61
        assert events.warn("cap", GUEST, "refused")
    assert "port tap0 (bridge br0) MAC 52:54:00:00:00:0a IP 10.0.0.5" in caplog.text
    for i in range(100):
        events.warn("cap", Guest("br0", "tap0", 10, GUEST.mac, f"10.1.0.{i}"), "x")
    assert len(events) == 3


def test_an_error_is_one_cut_line_per_interval_and_its_traceback_only_at_debug(caplog):
    clock = Clock()
    events = RateLimitedLog(logging.getLogger("test.errors"), interval_s=60, clock=clock)
    error = ValueError("guest said " + "x" * 5000)
    with caplog.at_level(logging.INFO):
        assert events.error("bug", GUEST, "answering failed", error)
        assert not events.error("bug", GUEST, "answering failed", error)
    assert len(caplog.records) == 1 and not caplog.records[0].exc_info
    assert "ValueError: guest said xxx" in caplog.text and len(caplog.text) < 600
    caplog.clear()
    clock.now += 61
    with caplog.at_level(logging.DEBUG):
        assert events.error("bug", GUEST, "answering failed", error)
    assert [bool(r.exc_info) for r in caplog.records] == [False, True]


def test_prepared_views_of_a_mac_only_record_are_bounded(tmp_path):
    store = open_store(str(tmp_path / "i.db"))
    try:
        store.put_many([parse_record({"instance_id": "i-m", "mac": GUEST.mac,
                                      "bridge": "br0"})])
        entry = store.entry_for(GUEST)
        for i in range(PREPARED_PER_ENTRY * 4):
            guest = Guest("br0", "tap0", 10, GUEST.mac, f"10.2.{i // 250}.{i % 250}")
            prepared = prepared_for(entry, guest)
            assert prepared.ec2[b"meta-data/local-ipv4"].body == guest.ip.encode()
        assert len(entry.prepared) == PREPARED_PER_ENTRY
        assert prepared_for(entry, guest) is prepared  # the newest is still memoised
    finally:
        store.close()


def test_memory_reclaimer_runs_after_a_flood_ends_and_not_too_often():
    clock = Clock()
    reclaimer = MemoryReclaimer(clock)
    reclaimer.peak = FLOOD_MIN_CONNECTIONS * 4
    assert not reclaimer.maybe_reclaim(reclaimer.peak - 1)  # still at the peak
    assert reclaimer.maybe_reclaim(10)
    assert reclaimer.reclaims == 1 and reclaimer.peak == 10
    reclaimer.peak = FLOOD_MIN_CONNECTIONS * 4
    assert not reclaimer.maybe_reclaim(10)  # rate-limited
    clock.now += 60
    assert reclaimer.maybe_reclaim(10)
    small = MemoryReclaimer(clock)
    small.peak = FLOOD_MIN_CONNECTIONS // 2
    assert not small.maybe_reclaim(0)  # normal traffic swings do not reclaim


def test_defence_counters_reach_prometheus_and_add_across_workers():
    stats = ResponderStats()
    stats.connections_refused["identity"] += 2
    stats.requests_throttled += 3
    stats.forgery_refused += 4
    worker = ResponderStats()
    worker.connections_refused["port"] += 1
    worker.requests_throttled += 1
    registry = CollectorRegistry()
    registry.register(StatsCollector(stats, lambda: [worker.as_dict()]))
    text = generate_latest(registry).decode()
    assert 'transparent_md_connections_refused_total{reason="identity"} 2.0' in text
    assert 'transparent_md_connections_refused_total{reason="port"} 1.0' in text
    assert 'transparent_md_connections_refused_total{reason="unknown"} 0.0' in text
    assert "transparent_md_requests_throttled_total 4.0" in text
    assert "transparent_md_forgery_refused_total 4.0" in text
    assert "transparent_md_header_timeouts_total 0.0" in text


def test_fake_store_is_real(tmp_path):
    store = make_store(str(tmp_path / "i.db"))
    try:
        assert store.entry_for(GUEST).instance.instance_id == "i-aaaa"
    finally:
        store.close()
