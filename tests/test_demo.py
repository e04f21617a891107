"""`transparent-md demo` as a user runs it: the table, the exit code, and no leftovers;
also `demo --fleet`, with the records in an etcd the demo starts itself."""

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
# Namespace name bases, one given through the environment and one through the option;
# each starts with the run's own base (tests/reaper.py), so a timed-out demo's
# namespaces are found and removed.
RUN_BASE = os.environ.get(NETNS_PREFIX_ENV, "tmd")[:24]
ENV_PREFIX, OPTION_PREFIX, FLEET_PREFIX = (f"{RUN_BASE}{role}" for role in ("env", "opt", "flt"))
# A demo taking its topology down (a daemon, an etcd, namespaces) on a loaded machine.
CLEANUP_TIMEOUT_S = 180


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def demo_prefix(output: str) -> str:
    match = re.search(r"hypervisor namespace (\S+)-hv", output)
    assert match, output
    return match.group(1)


def held_demo(args: list[str], env_prefix: str) -> subprocess.Popen:
    """`demo ARGS` with its output on a pipe and `env_prefix` in the environment."""
    return subprocess.Popen(DEMO + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, NETNS_PREFIX_ENV: env_prefix})


def output_until_held(proc: subprocess.Popen) -> str:
    """What a `demo --hold` printed up to its Ctrl-C hint (its topology is then up)."""
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "Ctrl-C to clean up" in line:
            break
    return "".join(seen)


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
    proc = held_demo(["--hold", "--netns-prefix", OPTION_PREFIX], ENV_PREFIX)
    try:
        output = output_until_held(proc)
        prefix = demo_prefix(output)
        assert prefix.startswith(OPTION_PREFIX)  # the option wins over the environment
        alive = {ns for ns in namespaces() if ns.startswith(prefix)}
        assert {f"{prefix}-{g.role}" for g in DEMO_GUESTS} <= alive
        assert f"ip netns exec {prefix}-t1-web curl" in output
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=CLEANUP_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, output + rest
    assert not {ns for ns in namespaces() if ns.startswith(prefix)}


def processes_naming(text: str) -> list[int]:
    """PIDs whose command line contains `text` (read from /proc, nothing signalled)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry))
    return found


def test_demo_fleet_serves_every_guest_from_its_own_etcd_and_cleans_up_on_ctrl_c():
    proc = held_demo(["--fleet", "--hold"], FLEET_PREFIX)
    try:
        output = output_until_held(proc)
        prefix = demo_prefix(output)
        for guest in DEMO_GUESTS:
            row = next(line for line in output.splitlines()
                       if f"{prefix}-{guest.role} " in line)
            assert row.split()[-1] == guest.instance_id, row
        assert "every guest got its own instance-id" in output
        url = re.search(r"records in etcd at (etcd://\S+) ", output).group(1)
        assert f"--store {url}" in output  # the hold hint names the fleet store
        # The records really are in the demo's etcd, read with the CLI from the hypervisor.
        listed = subprocess.run(["ip", "netns", "exec", f"{prefix}-hv", sys.executable, "-m",
                                 "transparent_md", "instance", "list", "--store", url],
                                capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0, listed.stderr
        assert all(g.instance_id in listed.stdout for g in DEMO_GUESTS), listed.stdout
        etcd_token = f"tmd-{prefix}"  # lab.etcd names its cluster token after the topology
        assert processes_naming(etcd_token)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=CLEANUP_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, output + rest
    assert not {ns for ns in namespaces() if ns.startswith(prefix)}
    assert not processes_naming(etcd_token)


def test_demo_fleet_refuses_a_store_path():
    res = subprocess.run(DEMO + ["--fleet", "--store", "/nonexistent/x.db"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode != 0
    assert "leave out --store" in res.stderr
