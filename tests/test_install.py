"""`scripts/install` into a temporary prefix (the layout other distributions get): only
the runtime, the CLI on PATH, the unit, the hook wrappers and the configuration in
place; the installed CLI and daemon work with nothing from the development venv.

The .deb is tested the same way in tests/test_package.py.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import write_records
from tests.daemon.test_service_unit import MAX_EXPOSURE
from tests.installed import (
    CHECKOUT,
    INSTALLED_ONLY,
    Install,
    install_prefix,
    run_as_libvirtd,
    systemd_analyze,
)
from transparent_md.cli.lab_extra import GET_THE_LAB
from transparent_md.lab.hypervisor import Hypervisor

pytestmark = pytest.mark.netns

DEV_ONLY = ("pytest", "hypothesis", "scapy", "aiohttp", "matplotlib", "botocore",
            "transparent_md.lab")


def test_only_the_runtime_is_installed(installed_prefix: Install):
    python = str(installed_prefix.python)
    for module in DEV_ONLY:
        # -I: not from the current directory (this checkout), as on a hypervisor
        res = subprocess.run([python, "-I", "-c", f"import {module}"], capture_output=True)
        assert res.returncode != 0, f"{module} is importable from the runtime install"
    res = subprocess.run([python, "-I", "-c", "import etcd3gw, bcc"], capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr


def test_the_cli_on_path_runs_with_libvirtds_environment(installed_prefix: Install):
    assert installed_prefix.cli.is_symlink()
    version = run_as_libvirtd([str(installed_prefix.cli), "--version"])
    assert version.returncode == 0 and version.stdout.startswith(b"transparent-md "), version
    helped = run_as_libvirtd([str(installed_prefix.cli), "--help"])
    assert helped.returncode == 0 and b"libvirt-hook" in helped.stdout, helped.stderr


@pytest.mark.parametrize("verb", ["bench", "demo"])
def test_the_lab_verbs_say_in_one_line_how_to_get_the_lab(installed_prefix: Install, verb):
    res = subprocess.run([str(installed_prefix.cli), verb], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr == f"transparent-md: error: {GET_THE_LAB.format(command=verb)}\n"


def test_the_files_name_the_install_paths(installed_prefix: Install):
    unit = installed_prefix.unit.read_text()
    exec_start = re.search(r"^ExecStart=(\S+) run --config (\S+)$", unit, re.M)
    assert exec_start, unit
    assert exec_start.group(1) == str(installed_prefix.python.parent / "transparent-md")
    assert exec_start.group(2) == str(installed_prefix.conf_dir / "run.yaml")
    docs = re.findall(r"file://(\S+)", unit)
    assert docs and all(Path(doc).is_file() for doc in docs), docs
    assert (installed_prefix.conf_dir / "run.yaml").is_file()
    assert f"TMD=${{TMD:-{installed_prefix.python.parent}/transparent-md}}" in \
        installed_prefix.libvirt_hook.read_text()
    assert str(installed_prefix.python.parent) in installed_prefix.proxmox_hook.read_text()
    perl = subprocess.run(["perl", "-c", str(installed_prefix.proxmox_hook)],
                          capture_output=True, text=True)
    assert perl.returncode == 0, perl.stderr


@pytest.mark.slow
def test_a_second_install_keeps_the_operators_configuration(tmp_path):
    """The second install is the one without BPF (`--datapath raw`, no bcc or headers
    asked for): it needs only what the raw-socket datapath imports."""
    first = install_prefix(tmp_path)
    edited = first.conf_dir / "run.yaml"
    edited.write_text("bridge: [br-mine]\n")
    second = install_prefix(tmp_path, "--datapath", "raw")
    assert edited.read_text() == "bridge: [br-mine]\n"
    assert second.unit.is_file()
    res = subprocess.run([str(second.python), "-I", "-c", "import nftables, dpkt, pyroute2"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_install_refuses_an_unknown_datapath_in_one_line():
    res = subprocess.run(["bash", "scripts/install", "--datapath", "xdp"], cwd=CHECKOUT,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and res.stderr == "install: --datapath is tc or raw\n"


def test_the_installed_daemon_serves_a_guest(installed_prefix: Install, topology, tmp_path):
    hv = Hypervisor(topology)
    hv.bridge("br0")
    guest = hv.guest("g0", bridge="br0", port="p0", addr="10.0.0.10/24",
                     routes=["169.254.169.254/32 dev eth0"])
    store = str(tmp_path / "instances.db")
    write_records(store, [{"instance_id": "i-installed", "mac": guest.mac}])
    daemon = hv.start_daemon(["br0"], store, python=str(installed_prefix.python),
                             env=INSTALLED_ONLY)
    try:
        assert hv.curl(guest.ns, "/latest/meta-data/instance-id") == (200, "i-installed")
    finally:
        assert daemon.stop() == 0


def test_the_installed_unit_passes_systemd_analyze(installed_prefix: Install):
    """As tests/test_package.py does for the package's unit; the man page named in
    Documentation= comes with the package only, hence no man check here."""
    verify, exposure = systemd_analyze(str(installed_prefix.unit), man=False)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    assert exposure is not None and exposure <= MAX_EXPOSURE
