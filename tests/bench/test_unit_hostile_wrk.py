"""The hostile section's wrk attacks: wrk takes whole seconds, and an attack that did
not run fails the section instead of leaving a row measured without it."""

from __future__ import annotations

import subprocess

import pytest

from transparent_md.lab.bench.hostile import wrk_seconds, wrk_summary

WRK_OUTPUT = """Running 3s test @ http://169.254.169.254/latest/meta-data/instance-id
  1 threads and 4 connections
  977 requests in 3.00s, 156.12KB read
  Non-2xx or 3xx responses: 901
Requests/sec:    325.87
Transfer/sec:     52.03KB
"""


@pytest.mark.parametrize("seconds", [0.5, 1.0, 2.5, 9.0])
def test_wrk_accepts_the_duration_it_is_given(seconds):
    """The default section's attacks last 2.5 s, which wrk refused as "-d2.5s"."""
    duration = wrk_seconds(seconds)
    assert duration >= seconds
    res = subprocess.run(["wrk", "-t1", "-c1", f"-d{duration}s", "--timeout", "1s",
                          "http://127.0.0.1:9/"],  # loopback, nothing listens: refused
                         capture_output=True, text=True, timeout=duration + 10)
    assert not res.stdout.startswith("Usage"), res.stdout


def test_the_summary_reads_the_rate_and_refusals():
    assert wrk_summary(WRK_OUTPUT) == "325.87 req/s, 901 refused"


def test_an_attack_that_did_not_run_is_an_error():
    usage = subprocess.run(["wrk", "-d2.5s", "http://127.0.0.1:9/"],
                           capture_output=True, text=True, timeout=10).stdout
    with pytest.raises(RuntimeError, match="did not run: Usage"):
        wrk_summary(usage)
