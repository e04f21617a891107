"""Ten `instance update` processes changing different fields of one record lose nothing.

Each process is the real CLI; they start together behind a file barrier and each
writes its field several times, so a read outside the write transaction (the old
`update`) would overwrite a neighbour's change with high probability.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from transparent_md.store import open_store, parse_record

# (flag, record attribute, value for round n) for ten distinct fields.
UPDATERS = (
    ("--hostname", "hostname", lambda n: f"host-{n}"),
    ("--local-hostname", "local_hostname", lambda n: f"local-{n}"),
    ("--availability-zone", "availability_zone", lambda n: f"zone-{n}a"),
    ("--instance-type", "instance_type", lambda n: f"type-{n}"),
    ("--ami-id", "ami_id", lambda n: f"ami-{n}"),
    ("--reservation-id", "reservation_id", lambda n: f"r-{n}"),
    ("--launch-index", "launch_index", lambda n: n),
    ("--account-id", "account_id", lambda n: f"{n:012d}"),
    ("--public-ipv4", "public_ipv4", lambda n: f"203.0.113.{n}"),
    ("--public-hostname", "public_hostname", lambda n: f"pub-{n}.example"),
)
REPO = str(Path(__file__).resolve().parents[2])
# Updates per process: the last one must survive every other process's updates.
ROUNDS = 8
# Generous: ten Python processes importing the CLI on a loaded 2-core machine.
START_TIMEOUT_S = 60

# Each child waits for the barrier file, then runs `instance update` ROUNDS times
# in-process through the real CLI entry point.
CHILD = textwrap.dedent("""
    import os, sys, time
    from transparent_md.cli.main import main
    store, barrier, flag = sys.argv[1:4]
    values = sys.argv[4:]
    while not os.path.exists(barrier):
        time.sleep(0.001)
    for value in values:
        if main(["instance", "update", "i-1", flag, value, "--store", store]) != 0:
            sys.exit(1)
""")


def test_ten_concurrent_updaters_of_different_fields_all_land(tmp_path):
    path = str(tmp_path / "i.db")
    store = open_store(path)
    store.add(parse_record({"instance_id": "i-1", "mac": "52:54:00:00:00:01"}))
    store.close()
    barrier = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": REPO}
    children = [
        subprocess.Popen([sys.executable, "-c", CHILD, path, str(barrier), flag,
                          *(str(value(n)) for n in range(1, ROUNDS + 1))],
                         env=env, cwd=tmp_path)
        for flag, _, value in UPDATERS
    ]
    time.sleep(1.0)  # let every child import and reach the barrier
    barrier.touch()
    codes = [child.wait(timeout=START_TIMEOUT_S) for child in children]
    assert codes == [0] * len(UPDATERS)
    record = open_store(path).get("i-1")
    kept = {attr: getattr(record, attr) for _, attr, _ in UPDATERS}
    assert kept == {attr: value(ROUNDS) for _, attr, value in UPDATERS}
