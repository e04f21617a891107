"""Prometheus view of the datapath: what the tc programs did, what they dropped and why,
slots in use and attached ports."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from transparent_md.datapath.datapath import Datapath


class DatapathCollector(Collector):
    """Reads the counters on scrape (one bpf(2) call per counter), never on the data path."""

    def __init__(self, datapath: Datapath) -> None:
        self._datapath = datapath

    def collect(self) -> Iterator:
        stats = self._datapath.stats()
        packets = CounterMetricFamily(
            "transparent_md_datapath_packets",
            "packets the tc programs kept, by what they did with them (redirected a "
            "request or a reply, answered ARP, gave a new identity a slot, flagged a slot "
            "whose MAC is locked to another port)", labels=["event"])
        for event, count in stats["events"].items():
            packets.add_metric([event], count)
        yield packets
        drops = CounterMetricFamily(
            "transparent_md_datapath_drops",
            "packets the tc programs dropped, each counted once under its reason",
            labels=["reason"])
        for reason, count in stats["drops"].items():
            drops.add_metric([reason], count)
        yield drops
        yield GaugeMetricFamily("transparent_md_shadow_slots_in_use",
                                "shadow slots held by guest identities (port, MAC, IP)",
                                value=self._datapath.slots_in_use())
        attacher = self._datapath.attacher
        yield GaugeMetricFamily("transparent_md_attached_ports", "bridge ports with our filter",
                                value=len(attacher.attached) if attacher else 0)
        keeper = self._datapath.keeper
        if keeper is None:
            return
        locks = keeper.stats
        yield CounterMetricFamily(
            "transparent_md_mac_lock_conflicts",
            "ports that asked with a MAC locked to another port (each (MAC, port) once "
            "while it keeps asking): answered nothing, put in line for the lock",
            value=locks.conflicts)
        yield CounterMetricFamily(
            "transparent_md_mac_lock_handovers",
            "MAC locks handed to the port that waited longest, when their port went",
            value=locks.handovers)
        restored = CounterMetricFamily(
            "transparent_md_mac_locks_at_start",
            "MAC locks of the last run at this start: put back, or released because "
            "their port was gone or is another link now", labels=["outcome"])
        restored.add_metric(["restored"], locks.restored)
        restored.add_metric(["released"], locks.released_at_start)
        yield restored
