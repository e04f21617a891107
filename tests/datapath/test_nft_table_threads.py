"""The raw datapath's nftables tables, changed and checked from two threads at once.

In the daemon the port watcher adds and removes ports while the guard thread lists the
tables to see whether someone changed them. Sharing one libnftables context between
threads garbled its replies under load ("nf_tables kernel ABI is broken", a guard that
saw a changed table and rebuilt it under the guests); the guard must also never judge a
table halfway through one of our own changes. Driven in a namespace of the test's own.
"""

from __future__ import annotations

import json
import sys

import pytest

pytestmark = pytest.mark.netns

ROUNDS = 300

CHURN = f"""
import json, sys, threading
from transparent_md.datapath.raw.nft_table import NftTables
from transparent_md.names import DaemonNames

tables = NftTables(DaemonNames.here("t"), answer_metadata_arp=True)
tables.install()
for i in range(4):
    tables.add_port(f"steady{{i}}", ["10.0.0.1"])
verdicts = []

def churn():
    for i in range({ROUNDS}):
        tables.add_port(f"p{{i % 8}}", ["10.0.0.1", "10.0.1.1"])
        tables.remove_port(f"p{{i % 8}}")

def guard():
    for _ in range({ROUNDS}):
        verdicts.append(tables.intact())

threads = [threading.Thread(target=churn), threading.Thread(target=guard)]
for t in threads:
    t.start()
for t in threads:
    t.join()
tables.remove()
print(json.dumps({{"checks": len(verdicts), "changed": verdicts.count(False)}}))
"""


def test_the_guard_never_sees_our_own_changes_as_someone_elses(topology):
    ns = topology.add_ns("nft")
    # The netdev table hooks the responder's veth: give it one to hook.
    topology.sh(ns, ["ip", "link", "add", "t-md", "type", "veth", "peer", "name", "t-md1"],
                check=True)
    res = topology.sh(ns, [sys.executable, "-c", CHURN], timeout=240)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout.splitlines()[-1]) == {"checks": ROUNDS, "changed": 0}
    assert "ABI" not in res.stderr, res.stderr[-2000:]
