"""Prometheus view of the datapath: the programs' per-CPU counters and attached ports."""

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
        packets = CounterMetricFamily(
            "transparent_md_datapath_packets",
            "packets the tc programs handled, by what they did", labels=["event"])
        for event, count in self._datapath.stats().items():
            packets.add_metric([event], count)
        yield packets
        attacher = self._datapath.attacher
        yield GaugeMetricFamily("transparent_md_attached_ports", "bridge ports with our filter",
                                value=len(attacher.attached) if attacher else 0)
