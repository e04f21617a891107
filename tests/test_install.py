"""`scripts/install`: a runtime-only install that runs the daemon, without the dev stack.

The install goes into a throw-away prefix (not /opt), from this checkout; then the
installed `transparent-md run` serves a guest in a namespace, and none of the test or
lab packages are importable from that venv.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import write_records
from transparent_md.lab.hypervisor import Hypervisor

pytestmark = pytest.mark.netns

CHECKOUT = Path(__file__).resolve().parents[1]
DEV_ONLY = ("pytest", "hypothesis", "scapy", "dpkt", "aiohttp", "matplotlib", "botocore")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    prefix = tmp_path_factory.mktemp("prefix")
    res = subprocess.run(["bash", str(CHECKOUT / "scripts" / "install"), "--prefix", str(prefix)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return prefix / "venv"


def test_only_the_runtime_is_installed(installed):
    python = str(installed / "bin" / "python")
    for module in DEV_ONLY:
        res = subprocess.run([python, "-c", f"import {module}"], capture_output=True)
        assert res.returncode != 0, f"{module} is importable from the runtime install"
    version = subprocess.run([str(installed / "bin" / "transparent-md"), "--version"],
                             capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("transparent-md ")


def test_the_installed_daemon_serves_a_guest(installed, topology, tmp_path):
    hv = Hypervisor(topology)
    hv.bridge("br0")
    guest = hv.guest("g0", bridge="br0", port="p0", addr="10.0.0.10/24",
                     routes=["169.254.169.254/32 dev eth0"])
    store = str(tmp_path / "instances.db")
    write_records(store, [{"instance_id": "i-installed", "mac": guest.mac}])
    daemon = hv.start_daemon(["br0"], store, python=str(installed / "bin" / "python"))
    try:
        assert hv.curl(guest.ns, "/latest/meta-data/instance-id") == (200, "i-installed")
    finally:
        assert daemon.stop() == 0
