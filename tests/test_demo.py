"""`transparent-md demo` as a user runs it: the table, the exit code, and no leftovers."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest

from transparent_md.cli.demo import DEMO_GUESTS
from transparent_md.lab.netns import NETNS_PREFIX_ENV

pytestmark = pytest.mark.netns

DEMO = [sys.executable, "-m", "transparent_md", "demo"]
# Namespace name bases, one given through the environment and one through the option.
ENV_PREFIX, OPTION_PREFIX = "tmdenv", "tmdopt"


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def demo_prefix(output: str) -> str:
    match = re.search(r"hypervisor namespace (\S+)-hv", output)
    assert match, output
    return match.group(1)


def test_demo_serves_every_guest_and_cleans_up():
    res = subprocess.run(DEMO, capture_output=True, text=True, timeout=300,
                         env={**os.environ, NETNS_PREFIX_ENV: ENV_PREFIX})
    assert res.returncode == 0, res.stdout + res.stderr
    prefix = demo_prefix(res.stdout)
    assert prefix.startswith(ENV_PREFIX) and prefix != ENV_PREFIX  # random part kept
    for guest in DEMO_GUESTS:
        row = next(line for line in res.stdout.splitlines() if f"{prefix}-{guest.role} " in line)
        assert row.split()[-1] == guest.instance_id, row
    assert "every guest got its own instance-id" in res.stdout
    assert not {ns for ns in namespaces() if ns.startswith(prefix)}


def test_demo_hold_stays_up_until_interrupted():
    proc = subprocess.Popen(DEMO + ["--hold", "--netns-prefix", OPTION_PREFIX],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, NETNS_PREFIX_ENV: ENV_PREFIX})
    try:
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if "Ctrl-C to clean up" in line:
                break
        output = "".join(seen)
        prefix = demo_prefix(output)
        assert prefix.startswith(OPTION_PREFIX)  # the option wins over the environment
        alive = {ns for ns in namespaces() if ns.startswith(prefix)}
        assert {f"{prefix}-{g.role}" for g in DEMO_GUESTS} <= alive
        assert f"ip netns exec {prefix}-t1-web curl" in output
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, output + rest
    assert not {ns for ns in namespaces() if ns.startswith(prefix)}
