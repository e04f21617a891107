"""The storm's guests dealt to several driver processes, and their parts merged back.

Every guest must start where one driver would have started it (i/M of the window), each
driver's guests must span the whole window, and the merged figures must be those of
all requests together (percentiles over every latency, not an average of parts).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from transparent_md.lab.bench import storm


def _part(latencies: list[float], failures: int = 0, done: float = 1.0, cpu: float = 0.5,
          elapsed: float = 2.0, causes: dict | None = None) -> dict:
    return {"requests": len(latencies) + failures, "latencies_ms": latencies,
            "failures": failures, "failure_examples": [f"e{i}" for i in range(failures)],
            "failure_causes": causes or {}, "last_guest_done_s": done, "cpu_s": cpu,
            "elapsed_s": elapsed}


def test_split_keeps_every_guest_at_its_place_in_the_window():
    names = [f"g{i}" for i in range(10)]
    specs = storm.split(names, 10.0, 3, start_at=123.0)
    assert len(specs) == 3 and all(s["start_at"] == 123.0 for s in specs)
    placed = {n: o for s in specs for n, o in zip(s["namespaces"], s["offsets"], strict=True)}
    assert placed == {f"g{i}": float(i) for i in range(10)}
    # Round-robin: each driver starts guests from the first second to the last.
    assert [s["offsets"][0] for s in specs] == [0.0, 1.0, 2.0]
    assert [s["offsets"][-1] for s in specs] == [9.0, 7.0, 8.0]


def test_split_never_makes_an_empty_driver():
    specs = storm.split(["a", "b"], 1.0, 8, start_at=0.0)
    assert [s["namespaces"] for s in specs] == [["a"], ["b"]]
    assert len(storm.split(["a"], 1.0, 0, start_at=0.0)) == 1


def test_merge_takes_percentiles_over_all_requests():
    fast = _part([1.0] * 98, done=3.0, cpu=1.0, elapsed=4.0)
    slow = _part([100.0, 200.0], failures=1, done=9.5, cpu=3.6, elapsed=4.0,
                 causes={"reply TimeoutError": 1})
    merged = storm.merge([fast, slow], guests=4, window_s=10.0)
    assert merged["requests"] == 101 and merged["failures"] == 1
    assert merged["p50_ms"] == 1.0 and merged["p99_ms"] == 100.0 and merged["max_ms"] == 200.0
    assert merged["last_guest_done_s"] == 9.5
    assert merged["failure_causes"] == {"reply TimeoutError": 1}
    assert merged["requests_per_guest"] == 101 / 4 and merged["drivers"] == 2
    assert merged["driver_cpu_us_per_request"] == round(4.6e6 / 101, 2)
    assert merged["driver_busiest_cpu_share"] == 0.9  # 3.6 s of CPU over 4 s


def test_a_driver_writes_its_part_to_the_result_file_not_to_stdout(tmp_path):
    """A part holds every latency; through a pipe nobody read yet, an unbuffered Python
    lost all but the first 64 KiB of it. The driver writes it to the file it is given."""
    spec = tmp_path / "storm-0.json"
    result = tmp_path / "storm-0.json.out"
    spec.write_text(json.dumps({"namespaces": [], "offsets": [], "start_at": 0.0,
                                "result": str(result)}))
    res = subprocess.run([sys.executable, "-m", "transparent_md.lab.bench.storm", str(spec)],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert res.returncode == 0, res.stderr
    assert res.stdout == ""
    part = json.loads(result.read_text())
    assert part["requests"] == 0 and part["latencies_ms"] == [] and part["failures"] == 0


def test_storm_guests_get_as_many_bridges_as_they_need():
    """A Linux bridge holds at most 1,023 ports ("Exchange full" past that): a storm of
    3,000 guests beside the wrk guests is spread over enough bridges, none over the cap."""
    from transparent_md.lab.bench import topology

    assert topology.bridges_for(208) == topology.BRIDGES
    for guests in (1_000, 3_008, 10_000):
        bridges = topology.bridges_for(guests)
        wrk_guests, storm_guests = 8, guests - 8
        per_bridge = {b: 0 for b in bridges}
        for i in range(wrk_guests):  # the wrk guests and the router's leg: first two only
            per_bridge[topology.BRIDGES[i % 2]] += 1
        for b in topology.BRIDGES:
            per_bridge[b] += 1
        for i in range(storm_guests):
            per_bridge[bridges[i % len(bridges)]] += 1
        assert max(per_bridge.values()) <= topology.BRIDGE_MAX_PORTS, (guests, per_bridge)
        assert [topology.bridge_index(b) for b in bridges] == list(range(len(bridges)))
